"""Raw HTTP and gRPC against the whole mesh through real Envoy: status codes and error bodies."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.keys import KeyStore, apikey
from libs.launch.mesh import Mesh
from tests.conftest import create_key

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"


def body(model: str = "smollm2", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def openai_error(r: httpx.Response) -> dict[str, object]:
    assert r.headers["content-type"].startswith("application/json"), r.text
    err: dict[str, object] = r.json()["error"]
    assert err["message"] and {"message", "type", "code", "param"} <= set(err)
    return err


def test_missing_unknown_and_revoked_keys_are_401(mesh: Mesh) -> None:
    assert (
        openai_error(httpx.post(f"{mesh.url}{CHAT}", json=body(), timeout=30)).get("type")
        == "authentication_error"
    )
    forged = "llm-0123456789abcdef-" + "a" * 40
    assert httpx.post(f"{mesh.url}{CHAT}", json=body(), headers=auth(forged), timeout=30).status_code == 401
    key = create_key(mesh.redis_url, "e2e-revoked")

    async def revoke() -> None:
        store = KeyStore.from_url(mesh.redis_url)
        await store.revoke(apikey.parse(key).key_id)
        await store.close()

    asyncio.run(revoke())
    r = httpx.post(f"{mesh.url}{CHAT}", json=body(), headers=auth(key), timeout=30)
    for _ in range(30):  # the router's key cache honours a revocation within its TTL (5 s)
        if r.status_code == 401:
            break
        asyncio.run(asyncio.sleep(0.25))
        r = httpx.post(f"{mesh.url}{CHAT}", json=body(), headers=auth(key), timeout=30)
    assert r.status_code == 401 and "revoked" in str(openai_error(r)["message"])


def test_model_outside_the_keys_list_is_403(mesh: Mesh) -> None:
    key = create_key(mesh.redis_url, "e2e-restricted", models=["smollm2-135m-fp32"])
    r = httpx.post(f"{mesh.url}{CHAT}", json=body("smollm2-135m-int8"), headers=auth(key), timeout=60)
    assert r.status_code == 403
    assert openai_error(r)["type"] == "permission_error"


def test_unknown_model_is_404(mesh: Mesh, api_key: str) -> None:
    r = httpx.post(f"{mesh.url}{CHAT}", json=body("no-such-model"), headers=auth(api_key), timeout=30)
    assert r.status_code == 404
    openai_error(r)


def test_rate_limited_key_is_429_with_retry_after(mesh: Mesh) -> None:
    key = create_key(mesh.redis_url, "e2e-limited", rpm=1)
    first = httpx.post(f"{mesh.url}{CHAT}", json=body(), headers=auth(key), timeout=60)
    assert first.status_code == 200, first.text
    second = httpx.post(f"{mesh.url}{CHAT}", json=body(), headers=auth(key), timeout=60)
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert openai_error(second)["type"] == "rate_limit_error"
    rest = httpx.post(
        f"{mesh.url}/api/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "options": {"model": "smollm2"}},
        headers=auth(key),
        timeout=60,
    )
    assert rest.status_code == 429 and int(rest.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{oops", "not valid JSON"),
        (b"\xc3\x28", "not valid UTF-8"),
        (json.dumps(body(temperature="warm")).encode(), "'temperature' must be a number"),
        (json.dumps(body(messages="hi")).encode(), "'messages' must be an array"),
        (json.dumps(body(stop={"a": 1})).encode(), "'stop' must be a string or an array"),
    ],
)
def test_malformed_requests_are_400(mesh: Mesh, api_key: str, content: bytes, fragment: str) -> None:
    r = httpx.post(
        f"{mesh.url}{CHAT}",
        content=content,
        headers={**auth(api_key), "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    assert fragment in str(openai_error(r)["message"])


def test_oversize_body_is_413(mesh: Mesh, api_key: str) -> None:
    big = body(messages=[{"role": "user", "content": "x" * (2 << 20)}])
    for path in (CHAT, "/api/v1/chat/completions"):
        r = httpx.post(f"{mesh.url}{path}", json=big, headers=auth(api_key), timeout=30)
        assert r.status_code == 413, path
        assert r.json()["error"]["code"] == 413


def test_unknown_paths_are_json_404(mesh: Mesh) -> None:
    r = httpx.get(f"{mesh.url}/no/such/path", timeout=10)
    assert r.status_code == 404 and "no route" in str(openai_error(r)["message"])
    r = httpx.get(f"{mesh.url}/v1/engines", timeout=10)
    assert r.status_code == 404 and "Unknown request URL" in str(openai_error(r)["message"])


async def test_grpc_through_envoy_with_and_without_key(mesh: Mesh, api_key: str) -> None:
    async with grpc.aio.insecure_channel(mesh.url.removeprefix("http://")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        models = await stub.ListModels(pb.ListModelsRequest(), metadata=auth(api_key).items(), timeout=10)
        assert any(m.id == "smollm2-135m-int8" for m in models.models)
        usage = await stub.GetUsage(
            pb.GetUsageRequest(window="day"), metadata=auth(api_key).items(), timeout=10
        )
        assert usage.tenant == "e2e"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
