"""The gateway over HTTP against a real grpc.aio fake router: shapes, mapping, errors, streams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from tests.services.gateway.conftest import Stack
from tests.services.gateway.fake_router import GOOD_KEY, LIMITED_KEY

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], **extra}


def echoed(content: str) -> dict[str, Any]:
    """What the fake router saw, from the reply it echoed."""
    seen: dict[str, Any] = json.loads(content)
    return seen


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


async def test_chat_maps_every_parameter(http: httpx.AsyncClient) -> None:
    body = chat_body(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                "name": "ann",
            },
        ],
        temperature=0.5,
        top_p=0.9,
        max_tokens=10,
        max_completion_tokens=20,
        stop="END",
        seed=42,
        n=1,
        user="u-1",
        cache="bypass",
    )
    r = await http.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["id"] == "chatcmpl-fake"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    seen = echoed(out["choices"][0]["message"]["content"])
    assert seen["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab", "name": "ann"},
    ]
    sampling = seen["options"]["sampling"]
    assert sampling["temperature"] == 0.5 and sampling["top_p"] == pytest.approx(0.9)
    assert sampling["max_tokens"] == 20  # max_completion_tokens wins
    assert sampling["stop"] == ["END"] and sampling["seed"] == "42"
    assert seen["options"]["user"] == "u-1" and seen["options"]["cache"] == "bypass"
    assert seen["traceparent"].split("-")[1] == TRACE_ID  # the router's span continues the caller's trace
    assert r.headers["x-llmesh-trace-id"] == TRACE_ID
    assert r.headers["x-llmesh-cache"] == "miss"


async def test_stop_list_and_force_cache(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json=chat_body(stop=["a", "b"], cache="force"))
    seen = echoed(r.json()["choices"][0]["message"]["content"])
    assert seen["options"]["sampling"]["stop"] == ["a", "b"]
    assert r.headers["x-llmesh-cache"] == "hit"


async def test_stream_sends_chunks_then_done(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True})
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert echoed(text)["options"]["model"] == "smollm2-135m"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 5


async def test_completions_and_streamed_completions(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/completions", json={"model": "smollm2-135m", "prompt": ["Once"], "max_tokens": 3}
    )
    out = r.json()
    assert out["object"] == "text_completion" and out["choices"][0]["finish_reason"] == "length"
    assert echoed(out["choices"][0]["text"])["prompt"] == "Once"
    r = await http.post(
        "/v1/completions",
        json={
            "model": "smollm2-135m",
            "prompt": "Once",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert len(texts) == 2, "the router's stream should arrive as it streams, not as one chunk"
    assert echoed("".join(texts))["prompt"] == "Once"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["total_tokens"] > 0 and all(c["object"] == "text_completion" for c in chunks)


async def test_models_usage_and_retrieve(http: httpx.AsyncClient) -> None:
    models = (await http.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["smollm2-135m", "smollm2-135m-int4"]
    assert models["data"][1]["owned_by"] == "llmesh"
    assert (await http.get("/v1/models/tiny")).json()["id"] == "smollm2-135m-int4"
    missing = await http.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    usage = (await http.get("/v1/usage", params={"window": "month"})).json()
    assert usage["window"] == "month" and usage["remaining_usd"] == 9.75
    assert (await http.get("/v1/usage", params={"window": "year"})).status_code == 400


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"authorization": ""}, 401, "api_key_missing"),
        ({"authorization": "Bearer nope"}, 401, "api_key_unknown"),
        ({"authorization": f"Bearer {LIMITED_KEY}"}, 429, "rate_limited"),
    ],
)
async def test_auth_and_rate_limit_errors(
    http: httpx.AsyncClient, headers: dict[str, str], status: int, code: str
) -> None:
    r = await http.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and set(err) == {"message", "type", "code", "param"}
    if status == 429:
        assert r.headers["retry-after"] == "7"
        assert err["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("model", "status", "param"),
    [("forbidden", 403, None), ("missing", 404, None), ("down", 503, None), ("bad-args", 400, "messages")],
)
async def test_router_errors_map_to_http(
    http: httpx.AsyncClient, model: str, status: int, param: str | None
) -> None:
    for stream in (False, True):
        r = await http.post("/v1/chat/completions", json=chat_body(model=model, stream=stream))
        assert r.status_code == status, (stream, r.text)
        assert r.json()["error"]["param"] == param
        assert len(r.headers["x-llmesh-trace-id"]) == 32


async def test_deadline_is_504(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json=chat_body(model="slow"))
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"


async def test_mid_stream_failure_is_an_error_event(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json=chat_body(model="break", stream=True))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "service_unavailable_error"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "empty"),
        (json.dumps(chat_body(temperature="hot")).encode(), "'temperature' must be a number"),
        (json.dumps(chat_body(temperature=3)).encode(), "'temperature' must be in [0, 2]"),
        (json.dumps(chat_body(n=2)).encode(), "only n=1"),
        (json.dumps(chat_body(stop=[1])).encode(), "'stop' must be a string or an array"),
        (json.dumps(chat_body(stop=["a"] * 5)).encode(), "at most 4"),
        (json.dumps(chat_body(max_tokens=True)).encode(), "'max_tokens' must be an integer"),
        (json.dumps(chat_body(stream="yes")).encode(), "'stream' must be a boolean"),
        (json.dumps(chat_body(cache="sometimes")).encode(), "'cache' must be one of"),
        (json.dumps(chat_body(tools=[{"type": "function"}])).encode(), "'tools' is not supported"),
        (json.dumps({"messages": []}).encode(), "at least one message"),
        (
            json.dumps({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            "role must be",
        ),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "'model' is required"),
    ],
)
async def test_bad_requests_are_400(
    stack: Stack, http: httpx.AsyncClient, content: bytes, message: str
) -> None:
    before = len(stack.router.calls)
    r = await http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    assert len(stack.router.calls) == before  # refused before reaching the router


async def test_oversize_body_is_413(http: httpx.AsyncClient) -> None:
    body = chat_body(messages=[{"role": "user", "content": "x" * 70_000}])
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


async def test_unknown_path_and_method_are_openai_errors(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/engines")
    assert r.status_code == 404 and "Unknown request URL" in r.json()["error"]["message"]
    r = await http.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_client_disconnect_cancels_the_router_stream(stack: Stack, http: httpx.AsyncClient) -> None:
    before = stack.router.cancelled
    async with http.stream("POST", "/v1/chat/completions", json=chat_body(model="hang", stream=True)) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # first chunk arrived; leave while the router is still generating
    for _ in range(100):
        if stack.router.cancelled > before:
            break
        await asyncio.sleep(0.02)
    assert stack.router.cancelled == before + 1


async def test_healthz_ready_with_router(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json()["router"] == "READY"


async def test_official_openai_client(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=GOOD_KEY, max_retries=0)
    async with client:
        models = await client.models.list()
        assert models.data[0].id == "smollm2-135m"
        chat = await client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "hi"}], stop=["x", "y"], seed=1
        )
        assert echoed(chat.choices[0].message.content or "")["options"]["sampling"]["stop"] == ["x", "y"]
        stream = await client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert echoed(text)["messages"][0]["content"] == "hi"
        completion = await client.completions.create(model="smollm2-135m", prompt="Once", max_tokens=4)
        assert echoed(completion.choices[0].text)["options"]["sampling"]["max_tokens"] == 4
        with pytest.raises(openai.RateLimitError):
            await client.with_options(api_key=LIMITED_KEY).models.list()
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="wrong").chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": "hi"}]
            )
