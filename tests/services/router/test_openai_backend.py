"""The OpenAI-compatible backend against a small local stand-in server (aiohttp)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.router.backends import BackendRequest
from services.router.openai_backend import OpenAIBackend
from services.router.registry import ModelRegistry

seen: list[dict[str, object]] = []


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    seen.append({"body": body, "auth": request.headers.get("authorization", "")})
    if body["model"] == "busy":
        return web.json_response({"error": {"message": "slow down"}}, status=429)
    if body["model"] == "broken":
        return web.json_response({"error": {"message": "bad"}}, status=400)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for piece in ("Hel", "lo ", "there"):
        event = {
            "model": "up-1",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        await resp.write(f"data: {json.dumps(event)}\n\n".encode())
    final = {"model": "up-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    await resp.write(f"data: {json.dumps(final)}\n\n".encode())
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return resp


@pytest.fixture
async def upstream(unused_tcp_port: int) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    yield f"http://127.0.0.1:{unused_tcp_port}/v1"
    await runner.cleanup()


def registry(base_url: str, name: str = "hosted") -> ModelRegistry:
    return ModelRegistry.from_yaml(f"""
models:
  - name: {name}
    backend: openai
    base_url: {base_url}
    api_key_env: STANDIN_API_KEY
    context_length: 4096
    input_price_per_1k: 1
    output_price_per_1k: 2
    tier: 3
""")


def request(max_tokens: int = 3) -> BackendRequest:
    return BackendRequest(
        prompt_token_ids=[],
        sampling=gen_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=["\n"]),
        request_id="r1",
        messages=[gen_pb.ChatMessage(role="user", content="hi")],
    )


async def test_streams_text_finish_reason_and_upstream_usage(
    upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_API_KEY", "sk-test-123")
    spec = registry(upstream).get("hosted")
    backend = OpenAIBackend()
    try:
        (target,) = backend.targets(spec)
        deltas = [d async for d in backend.stream(spec, target, request(), 5.0)]
    finally:
        await backend.stop()
    assert "".join(d.text for d in deltas) == "Hello there"
    assert deltas[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3
    sent = seen[-1]
    assert sent["auth"] == "Bearer sk-test-123"
    body = sent["body"]
    assert isinstance(body, dict)
    assert body["stream"] is True and body["max_tokens"] == 3 and body["stop"] == ["\n"]
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("model", "error"), [("busy", ResourceExhausted), ("broken", InvalidArgument)])
async def test_http_errors_map_to_typed_errors(upstream: str, model: str, error: type[Exception]) -> None:
    spec = registry(upstream, model).get(model)
    backend = OpenAIBackend()
    try:
        with pytest.raises(error):
            async for _ in backend.stream(spec, backend.targets(spec)[0], request(), 5.0):
                pass
    finally:
        await backend.stop()


async def test_unreachable_upstream_is_unavailable(unused_tcp_port: int) -> None:
    spec = registry(f"http://127.0.0.1:{unused_tcp_port}/v1").get("hosted")
    backend = OpenAIBackend()
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            async for _ in backend.stream(spec, backend.targets(spec)[0], request(), 2.0):
                pass
    finally:
        await backend.stop()
