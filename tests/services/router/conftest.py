"""Fixtures: the mesh (Redis, tokenizer, safety, cache, inference, two routers) as real processes
on free ports, API keys, and router stubs. Every process is stopped by PID at the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.keys import KeyStore
from libs.launch.mesh import Mesh, MeshConfig

ROOT = Path(__file__).resolve().parents[3]
ROUTER_ENV = {
    "LLMESH_ROUTER_BREAKER_FAILURES": "3",
    "LLMESH_ROUTER_BREAKER_OPEN_S": "1.0",
    "LLMESH_ROUTER_BREAKER_PROBE_S": "1.0",
    "LLMESH_ROUTER_LOAD_POLL_S": "0.2",
    "LLMESH_ROUTER_FIRST_TOKEN_TIMEOUT_S": "20",
}


# Tenants added to the shipped safety policy for these tests: e-mail addresses pass input
# screening untouched, and are blocked / redacted in the output.
TEST_TENANTS = {
    "output-block": {"input": {"EMAIL": {"action": "allow"}}, "output": {"EMAIL": {"action": "block"}}},
    "output-redact": {"input": {"EMAIL": {"action": "allow"}}, "output": {"EMAIL": {"action": "redact"}}},
}


def safety_policy(workdir: Path) -> Path:
    """The shipped policy plus TEST_TENANTS, written into workdir."""
    doc = yaml.safe_load((ROOT / "services" / "safety" / "policy.yaml").read_text())
    doc["tenants"] = {**(doc.get("tenants") or {}), **TEST_TENANTS}
    path = workdir / "safety-policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start_mesh(workdir: Path, inference_replicas: int = 1, router_replicas: int = 2) -> Mesh:
    """The mesh without Envoy or the gateway (the router is reached over gRPC directly)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = MeshConfig(
        workdir=workdir,
        with_envoy=False,
        with_gateway=False,
        inference_replicas=inference_replicas,
        router_replicas=router_replicas,
        env={"router": ROUTER_ENV, "safety": {"LLMESH_SAFETY_POLICY_FILE": str(safety_policy(workdir))}},
    )
    return Mesh(cfg).start()


def extra_router_env(mesh: Mesh, port: int, **overrides: str) -> dict[str, str]:
    """Environment of one more router process on `port`, wired to `mesh`'s services (overrides win)."""
    return {
        **ROUTER_ENV,
        "OTEL_TRACES_EXPORTER": "none",
        "LLMESH_ROUTER_PORT": str(port),
        "LLMESH_ROUTER_METRICS_PORT": "-1",
        "LLMESH_ROUTER_TOKENIZER_ADDR": mesh.addr("tokenizer"),
        "LLMESH_ROUTER_SAFETY_ADDR": mesh.addr("safety"),
        "LLMESH_ROUTER_CACHE_ADDR": mesh.addr("cache"),
        "LLMESH_ROUTER_INFERENCE_ADDRS": mesh.addr("inference-0"),
        "LLMESH_ROUTER_REDIS_URL": mesh.redis_url,
        **overrides,
    }


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("router-mesh"))
    try:
        yield m
    finally:
        m.stop()


async def create_key(redis_url: str, tenant: str = "acme", **limits: Any) -> str:
    """A fresh API key (plaintext) with the given limits."""
    store = KeyStore.from_url(redis_url)
    try:
        key, _ = await store.create(tenant, **limits)
    finally:
        await store.close()
    return key


@pytest.fixture
async def key(mesh: Mesh) -> str:
    return await create_key(mesh.redis_url)


@pytest.fixture
async def router(mesh: Mesh) -> AsyncIterator[pb_grpc.RouterServiceStub]:
    async with grpc.aio.insecure_channel(mesh.addr("router-0")) as channel:
        yield pb_grpc.RouterServiceStub(channel)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def chat(
    text: str, model: str = "smollm2", max_tokens: int = 8, cache: str = "", **sampling: Any
) -> pb.CreateChatCompletionRequest:
    """A chat request with greedy decoding by default (so results are cacheable)."""
    params = gen_pb.SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
    return pb.CreateChatCompletionRequest(
        messages=[gen_pb.ChatMessage(role="user", content=text)],
        options=pb.GenerationOptions(model=model, sampling=params, cache=cache),
    )


async def headers(call: Any) -> dict[str, str]:
    return {k: v for k, v in await call.initial_metadata() if isinstance(v, str)}


async def wait_for(predicate: Any, timeout_s: float = 10.0, every_s: float = 0.1) -> bool:
    """Poll an async predicate until true or timeout (returns its last value)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        if await predicate():
            return True
        if loop.time() > end:
            return False
        await asyncio.sleep(every_s)
