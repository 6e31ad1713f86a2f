"""One audit event per request, with what an operator bills and debugs by, and never the prompt,
the key or a PII value (router and safety logs both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.keys import apikey
from libs.launch.mesh import Mesh
from tests.services.router.conftest import auth, chat, create_key, headers, wait_for

EMAIL = "ines.moreau@fabrikam-audit.example"
PROMPT = f"Write one polite sentence to {EMAIL} about the quarterly audit timetable."


def _audit_events(log: Path, request_id: str) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if '"llmesh.audit"' in line:
            event = json.loads(line)
            if event.get("request_id") == request_id:
                events.append(event)
    return events


async def test_audit_event_has_the_accounting_and_none_of_the_secrets(mesh: Mesh) -> None:
    key = await create_key(mesh.redis_url, "audited")
    async with grpc.aio.insecure_channel(mesh.addr("router-0")) as channel:
        call = pb_grpc.RouterServiceStub(channel).CreateChatCompletion(
            chat(PROMPT, max_tokens=12, cache="bypass"), metadata=auth(key)
        )
        resp = await call
        request_id = (await headers(call))["x-llmesh-request-id"]
    log = mesh.cfg.workdir / "router-0.log"

    async def logged() -> bool:
        return bool(_audit_events(log, request_id))

    assert await wait_for(logged, timeout_s=10)
    (event,) = _audit_events(log, request_id)
    assert event["tenant"] == "audited" and event["key_id"] == apikey.parse(key).key_id
    assert event["status"] == "OK" and event["model"] == resp.model
    assert event["prompt_tokens"] == resp.usage.prompt_tokens
    assert event["completion_tokens"] == resp.usage.completion_tokens
    assert event["cost_usd"] == round(resp.route.cost_usd, 8) and event["cost_usd"] > 0
    assert event["cache"] == "bypass" and event["safety"] == "redact" and event["output_safety"] == "allow"
    assert "EMAIL" in event["findings"]
    assert event["trace_id"] == resp.route.trace_id
    assert {"rate_limit", "tokenize", "input_safety", "budget", "first_token"} <= set(event["steps_ms"])
    assert event["latency_ms"] > 0 and event["attempts"] == list(resp.route.attempts)

    secret = apikey.parse(key).secret
    for name in ("router-0.log", "router-1.log", "safety.log"):
        text = (mesh.cfg.workdir / name).read_text(errors="replace")
        assert EMAIL not in text and "quarterly audit timetable" not in text, name
        assert secret not in text, name
