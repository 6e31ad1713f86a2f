"""`llmesh tenants show|set`: tenant-wide settings that every key of the tenant inherits.

A key's own setting wins over its tenant's, and the tenant's over the router's default. Today the
one tenant-wide setting is `safety_fail_mode`: what a request does when the safety service is
down (`closed` refuses with 503, `open` serves unscreened with a log line and a metric).
Routers pick a change up within the key cache's lifetime (5 s).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from libs.cli.command import run_command
from libs.cli.keys import _common
from libs.keys import KeyStore, TenantSettings
from libs.keys.store import fail_mode_setting


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmesh tenants", description="Tenant-wide settings.", parents=[_common(True)]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print a tenant's settings", parents=[_common(False)])
    show.add_argument("--tenant", required=True)
    set_ = sub.add_parser("set", help="change a tenant's settings", parents=[_common(False)])
    set_.add_argument("--tenant", required=True)
    set_.add_argument(
        "--safety-fail-mode",
        choices=("open", "closed", "inherit"),
        required=True,
        help="when safety is down: refuse (closed), serve unscreened (open), or the router's default",
    )
    return parser


def _row(t: TenantSettings) -> dict[str, str]:
    return {"tenant": t.tenant, "safety_fail_mode": t.safety_fail_mode or "inherit"}


async def _run(args: argparse.Namespace) -> int:
    store = KeyStore.from_url(args.redis_url)
    try:
        if args.action == "set":
            mode = fail_mode_setting(args.safety_fail_mode)  # "inherit" -> ""
            settings = await store.set_tenant(args.tenant, safety_fail_mode=mode)
        else:
            settings = await store.get_tenant(args.tenant)
    finally:
        await store.close()
    row = _row(settings)
    print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def main(argv: Sequence[str]) -> int:
    """`llmesh tenants ...`; returns the exit status."""
    return run_command(_parser(), _run, argv)
