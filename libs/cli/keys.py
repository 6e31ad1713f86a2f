"""`llmesh keys create|revoke|list`: manage API keys in Redis.

The plaintext key is printed once, by `create`, and never again: only its digest is stored.
The Redis address comes from `--redis-url` or `LLMESH_REDIS_URL`; the pepper from
`LLMESH_KEY_PEPPER` (the router must see the same value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from libs.cli.command import run_command
from libs.keys import KeyRecord, KeyStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _common(defaults: bool) -> argparse.ArgumentParser:
    """--redis-url and --json, accepted before or after the action."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LLMESH_REDIS_URL", DEFAULT_REDIS_URL) if defaults else argparse.SUPPRESS,
        help=f"Redis holding the keys (env LLMESH_REDIS_URL; default {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--json", action="store_true", default=False if defaults else argparse.SUPPRESS, help="print JSON"
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmesh keys", description="Manage llmesh API keys.", parents=[_common(True)]
    )
    sub = parser.add_subparsers(dest="action", required=True)

    create = sub.add_parser("create", help="create a key and print it once", parents=[_common(False)])
    create.add_argument("--tenant", required=True, help="tenant the key belongs to")
    create.add_argument("--models", type=_models, default=[], help="comma-separated models (default: all)")
    create.add_argument("--rpm", type=int, default=0, help="requests per minute (0 = unlimited)")
    create.add_argument("--tpm", type=int, default=0, help="tokens per minute (0 = unlimited)")
    create.add_argument("--budget-day", type=float, default=0.0, help="US dollars per day (0 = unlimited)")
    create.add_argument(
        "--budget-month", type=float, default=0.0, help="US dollars per month (0 = unlimited)"
    )
    create.add_argument(
        "--safety-fail-mode",
        choices=("open", "closed"),
        default="",
        help="when the safety service is down: refuse (closed) or serve unscreened (open); "
        "default: the tenant's setting (`llmesh tenants set`), else the router's (closed)",
    )
    create.add_argument("--no-cache", action="store_true", help="never serve this key from the cache")

    revoke = sub.add_parser("revoke", help="revoke a key by id", parents=[_common(False)])
    revoke.add_argument("key_id", help="the id part of the key (16 hex digits)")

    list_ = sub.add_parser("list", help="list keys (never the keys themselves)", parents=[_common(False)])
    list_.add_argument("--tenant", default=None, help="only this tenant's keys")
    return parser


def _row(r: KeyRecord) -> dict[str, object]:
    return {
        "key_id": r.key_id,
        "tenant": r.tenant,
        "models": list(r.models),
        "rpm": r.rpm,
        "tpm": r.tpm,
        "budget_day_usd": r.budget_day_usd,
        "budget_month_usd": r.budget_month_usd,
        "safety_fail_mode": r.safety_fail_mode or "inherit",
        "cache_allowed": r.cache_allowed,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created_at)),
        "revoked": r.revoked,
    }


def _table(records: Sequence[KeyRecord]) -> str:
    header = (
        f"{'KEY ID':<17} {'TENANT':<16} {'RPM':>6} {'TPM':>8} {'DAY $':>8} {'MONTH $':>8}  STATE    MODELS"
    )
    lines = [header]
    for r in records:
        state = "revoked" if r.revoked else "active"
        lines.append(
            f"{r.key_id:<17} {r.tenant:<16} {r.rpm:>6} {r.tpm:>8} {r.budget_day_usd:>8.2f} "
            f"{r.budget_month_usd:>8.2f}  {state:<8} {','.join(r.models) or '*'}"
        )
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    store = KeyStore.from_url(args.redis_url)
    try:
        if args.action == "create":
            plaintext, record = await store.create(
                args.tenant,
                models=args.models,
                rpm=args.rpm,
                tpm=args.tpm,
                budget_day_usd=args.budget_day,
                budget_month_usd=args.budget_month,
                safety_fail_mode=args.safety_fail_mode,
                cache_allowed=not args.no_cache,
            )
            if args.json:
                print(json.dumps({"key": plaintext, **_row(record)}))
            else:
                print(plaintext)
                print(f"key id {record.key_id} for tenant {record.tenant}; this key is shown only once.",
                      file=sys.stderr)  # fmt: skip
        elif args.action == "revoke":
            record = await store.revoke(args.key_id)
            print(json.dumps(_row(record)) if args.json else f"revoked {record.key_id} ({record.tenant})")
        else:
            records = await store.list(args.tenant)
            print(json.dumps([_row(r) for r in records]) if args.json else _table(records))
    finally:
        await store.close()
    return 0


def main(argv: Sequence[str]) -> int:
    """`llmesh keys ...`; returns the exit status."""
    return run_command(_parser(), _run, argv)
