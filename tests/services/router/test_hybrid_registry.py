"""One registry, local and hosted models: a router process serves an OpenAI-compatible upstream (a
local stand-in server) beside the llmesh models, with its key from the environment, and falls
back from an upstream that is down to a local model before the first token."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from aiohttp import web
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.launch.mesh import Mesh, grpc_serving
from libs.testing.process import ManagedProcess, free_port
from tests.services.router.conftest import ROOT, auth, chat, create_key, extra_router_env

UPSTREAM_KEY = "sk-standin-0123456789"
seen: list[dict[str, object]] = []


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    seen.append({"body": body, "auth": request.headers.get("authorization", "")})
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for piece in ("Upstream ", "says ", "hello"):
        event = {
            "model": "up-1",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        await resp.write(f"data: {json.dumps(event)}\n\n".encode())
    final = {"model": "up-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}
    await resp.write(f"data: {json.dumps(final)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return resp


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    port = free_port()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def _registry(path: Path, upstream: str, dead: str) -> Path:
    doc = yaml.safe_load((ROOT / "services" / "router" / "models.yaml").read_text())
    hosted = {
        "backend": "openai",
        "api_key_env": "STANDIN_API_KEY",
        "backend_model": "up-1",
        "tokenizer": "smollm2-135m-int8",
        "context_length": 32000,
        "input_price_per_1k": 0.002,
        "output_price_per_1k": 0.008,
        "tier": 3,
    }
    doc["models"] += [
        {"name": "hosted", "base_url": upstream, **hosted},
        {"name": "hosted-down", "base_url": dead, "fallback": ["smollm2-135m-int8"], **hosted},
    ]
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def hybrid_router(mesh: Mesh, upstream: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    registry = _registry(tmp_path / "models.yaml", upstream, f"http://127.0.0.1:{free_port()}/v1")
    env = extra_router_env(
        mesh, port, STANDIN_API_KEY=UPSTREAM_KEY, LLMESH_ROUTER_REGISTRY_FILE=str(registry)
    )
    proc = ManagedProcess(
        "router-hybrid", [sys.executable, "-m", "services.router"], tmp_path / "r.log", env=env
    )
    proc.start()
    try:
        proc.wait_until(lambda: grpc_serving(port), 60, "SERVING")
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


async def test_hosted_model_is_served_from_the_upstream_with_its_env_key(
    mesh: Mesh, hybrid_router: str
) -> None:
    key = await create_key(mesh.redis_url, "hybrid")
    async with grpc.aio.insecure_channel(hybrid_router) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        listed = await stub.ListModels(pb.ListModelsRequest(), metadata=auth(key))
        models = {m.id for m in listed.models}
        assert {"hosted", "smollm2-135m-int8", "smollm2-135m-fp32"} <= models
        resp = await stub.CreateChatCompletion(
            chat("Say hello.", model="hosted", cache="bypass"), metadata=auth(key)
        )
    assert resp.choices[0].message.content == "Upstream says hello"
    assert resp.model == "hosted" and resp.route.attempts[-1].endswith(":hosted:ok")
    assert resp.usage.prompt_tokens == 11 and resp.usage.completion_tokens == 3, "usage comes from upstream"
    assert resp.route.cost_usd == pytest.approx((11 * 0.002 + 3 * 0.008) / 1000)
    sent = seen[-1]
    assert sent["auth"] == f"Bearer {UPSTREAM_KEY}"
    body = sent["body"]
    assert isinstance(body, dict) and body["model"] == "up-1"
    assert body["messages"] == [{"role": "user", "content": "Say hello."}]


async def test_an_upstream_that_is_down_falls_back_to_a_local_model(mesh: Mesh, hybrid_router: str) -> None:
    key = await create_key(mesh.redis_url, "hybrid")
    async with grpc.aio.insecure_channel(hybrid_router) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        resp = await stub.CreateChatCompletion(
            chat("What is the capital of France?", model="hosted-down", max_tokens=8, cache="bypass"),
            metadata=auth(key),
        )
    assert resp.model == "smollm2-135m-int8"
    assert "fell back to smollm2-135m-int8" in resp.route.reason
    assert resp.route.attempts[0].endswith(":hosted-down:unavailable"), resp.route.attempts
    assert resp.route.attempts[-1].endswith(":smollm2-135m-int8:ok")
    assert resp.choices[0].message.content.strip()
