"""Real Envoy in front of the fake router and the real gateway: transcoding, status mapping,
local replies, limits, gRPC passthrough and the OpenAI API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.testing.otlp_receiver import OtlpReceiver
from tests.services.gateway.conftest import Stack
from tests.services.gateway.edge_proxy import Edge, edge_proxy
from tests.services.gateway.fake_router import GOOD_KEY, LIMITED_KEY

pytestmark = pytest.mark.asyncio(loop_scope="session")
AUTH = {"authorization": f"Bearer {GOOD_KEY}"}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="session")
def edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with edge_proxy(
        tmp_path_factory.mktemp("envoy"),
        stack.router_port,
        stack.gateway.port,
        max_body_bytes=64 * 1024,
        generate_timeout_s=1,
    ) as proxy:
        yield proxy


@pytest.fixture(scope="session")
async def client(edge: Edge) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=edge.url, timeout=10)


def chat(model: str = "smollm2-135m", **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "hi"}], "options": {"model": model}, **extra}


async def test_transcoded_chat_uses_proto_field_names(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/chat/completions", json=chat(), headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 5
    assert out["route"]["attempts"] == [] and "cost_usd" in out["route"]  # primitives always printed
    assert r.headers["x-llmesh-cache"] == "miss"


async def test_transcoded_stream_is_sse(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/chat/completions:stream", json=chat(), headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[0]["choices"][0]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_transcoded_reads(client: httpx.AsyncClient) -> None:
    models = (await client.get("/api/v1/models", headers=AUTH)).json()
    assert [m["id"] for m in models["models"]] == ["smollm2-135m", "smollm2-135m-int4"]
    usage = (await client.get("/api/v1/usage?window=month", headers=AUTH)).json()
    assert usage["window"] == "month"


@pytest.mark.parametrize(
    ("model", "headers", "status"),
    [
        ("smollm2-135m", {}, 401),
        ("smollm2-135m", {"authorization": "Bearer nope"}, 401),
        ("forbidden", AUTH, 403),
        ("missing", AUTH, 404),
        ("bad-args", AUTH, 400),
        ("down", AUTH, 503),
        ("slow", AUTH, 504),
    ],
)
async def test_grpc_status_becomes_http_status(
    client: httpx.AsyncClient, model: str, headers: dict[str, str], status: int
) -> None:
    r = await client.post("/api/v1/chat/completions", json=chat(model), headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body.get("message") or body.get("error", {}).get("message")


async def test_rate_limit_is_429_with_retry_after(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/chat/completions", json=chat(), headers={"authorization": f"Bearer {LIMITED_KEY}"}
    )
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    body = r.json()
    assert body["code"] == 8 and "rate limit" in body["message"]
    reasons = [d.get("reason") for d in body["details"]]
    assert "RATE_LIMITED" in reasons


async def test_unknown_paths_are_json_404(client: httpx.AsyncClient) -> None:
    for path in ("/", "/nope", "/api/v1/nothing", "/v2/chat/completions"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/json")
        assert (
            "no route" in r.json()["error"]["message"]
            or "Unknown request URL" in r.json()["error"]["message"]
        )


async def test_oversize_body_is_json_413(client: httpx.AsyncClient) -> None:
    big = "x" * (70 * 1024)
    for path, body in (
        ("/api/v1/chat/completions", chat(messages=[{"role": "user", "content": big}])),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": big}]}),
    ):
        r = await client.post(path, json=body, headers=AUTH)
        assert r.status_code == 413, path
        assert r.json()["error"]["code"] == 413


async def test_grpc_passthrough_with_and_without_key(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        models = await stub.ListModels(
            pb.ListModelsRequest(), metadata=[("authorization", f"Bearer {GOOD_KEY}")]
        )
        assert len(models.models) == 2
        request = pb.StreamChatCompletionRequest(
            messages=[gen_pb.ChatMessage(role="user", content="hi")],
            options=pb.GenerationOptions(model="smollm2-135m"),
        )
        stream = stub.StreamChatCompletion(request, metadata=[("authorization", f"Bearer {GOOD_KEY}")])
        chunks = [c async for c in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListModels(pb.ListModelsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetUsage(pb.GetUsageRequest(), metadata=[("authorization", f"Bearer {LIMITED_KEY}")])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after", "7") in tuple(info.value.trailing_metadata() or ())


async def test_openai_client_through_envoy(edge: Edge) -> None:
    async with openai.AsyncOpenAI(base_url=f"{edge.url}/v1", api_key=GOOD_KEY, max_retries=0) as client:
        assert [m.id for m in (await client.models.list()).data] == ["smollm2-135m", "smollm2-135m-int4"]
        reply = await client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        )
        seen = json.loads(reply.choices[0].message.content or "")
        assert seen["traceparent"].split("-")[1] == TRACE_ID  # Envoy and the gateway kept the trace
        assert seen["x_request_id"]  # Envoy's request id reaches the router
        stream = await client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert json.loads(text)["messages"] == [{"role": "user", "content": "hi"}]
        done = await client.completions.create(model="smollm2-135m", prompt="Once")
        assert json.loads(done.choices[0].text)["prompt"] == "Once"
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="forbidden", messages=[{"role": "user", "content": "x"}]
            )


async def test_access_log_is_json_without_secrets(client: httpx.AsyncClient, edge: Edge) -> None:
    await client.get("/v1/models", headers=AUTH)
    lines = []
    for _ in range(50):  # the access log is flushed asynchronously
        lines = [json.loads(x) for x in edge.access_log().splitlines() if x.startswith("{")]
        if any(x["path"] == "/v1/models" for x in lines):
            break
        await asyncio.sleep(0.1)
    entry = next(x for x in lines if x["path"] == "/v1/models")
    assert entry["status"] == 200 and entry["cluster"] == "gateway" and len(entry["llmesh_trace_id"]) == 32
    assert GOOD_KEY not in edge.access_log()


async def test_local_rate_limit_is_json_429(stack: Stack, tmp_path: Path) -> None:
    with edge_proxy(tmp_path, stack.router_port, stack.gateway.port, global_rps=1, global_burst=1) as proxy:
        codes = []
        async with httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=5) as client:
            for _ in range(4):
                r = await client.get("/v1/models")
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"
                    assert r.json()["error"]["type"] == "local_rate_limited"
        assert codes[0] == 200 and 429 in codes


async def test_envoy_exports_otlp_spans_continuing_traceparent(stack: Stack, tmp_path: Path) -> None:
    with OtlpReceiver(port=0) as receiver:
        collector = receiver.endpoint.removeprefix("http://")
        with edge_proxy(tmp_path, stack.router_port, stack.gateway.port, otlp_collector=collector) as proxy:
            parent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
            async with httpx.AsyncClient(base_url=proxy.url, headers=AUTH, timeout=5) as client:
                for _ in range(6):  # Envoy's tracer flushes after a few spans or a few seconds
                    r = await client.get("/v1/models", headers={"traceparent": parent})
                    assert r.status_code == 200
            spans = []
            for _ in range(100):
                spans = [s for s in receiver.spans(TRACE_ID) if s.service == "envoy"]
                if spans:
                    break
                await asyncio.sleep(0.1)
    assert spans, "Envoy exported no span of the caller's trace"
    assert all(s.kind == "SERVER" for s in spans)
    assert {s.parent_span_id for s in spans} == {"b7ad6b7169203331"}
