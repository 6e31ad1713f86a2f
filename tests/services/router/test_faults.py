"""Faults: a replica killed under load, a tokenizer that never answers. Nothing may hang."""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.launch.mesh import Mesh, grpc_serving
from libs.testing.process import ManagedProcess, free_port
from tests.services.router.conftest import auth, chat, create_key, extra_router_env, start_mesh, wait_for

CLIENT_TIMEOUT_S = 90.0
ROUTER_ERRORS = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.fixture(scope="module")
def fault_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("router-faults"), inference_replicas=2, router_replicas=1)
    try:
        yield m
    finally:
        m.stop()


async def breaker_state(redis_url: str, addr: str) -> str:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return str(await client.hget(f"llmesh:breaker:llmesh:{addr}", "state") or "closed")
    finally:
        await client.aclose()


def metric(port: int, name: str, label: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{") and label in line:
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_unresponsive_tokenizer_hits_its_deadline(fault_mesh: Mesh, tmp_path: Path) -> None:
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    port = free_port()
    env = extra_router_env(
        fault_mesh,
        port,
        LLMESH_ROUTER_TOKENIZER_ADDR=f"127.0.0.1:{blackhole.getsockname()[1]}",
        LLMESH_ROUTER_TOKENIZER_TIMEOUT_S="0.5",
    )
    proc = ManagedProcess(
        "router-slow-tok", [sys.executable, "-m", "services.router"], tmp_path / "r.log", env=env
    )
    proc.start()
    try:
        proc.wait_until(lambda: grpc_serving(port), 60, "SERVING")
        key = await create_key(fault_mesh.redis_url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateChatCompletion(chat("hi"), metadata=auth(key), timeout=CLIENT_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "tokenizer" in (err.value.details() or ""), "the router's deadline fired, not the client's"
    finally:
        proc.stop()
        blackhole.close()


async def test_killing_a_replica_under_200_requests(fault_mesh: Mesh) -> None:
    key = await create_key(fault_mesh.redis_url, "faults")
    victim = fault_mesh.addr("inference-1")
    async with grpc.aio.insecure_channel(fault_mesh.addr("router-0")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        await stub.CreateChatCompletion(chat("warm up", cache="bypass"), metadata=auth(key))

        async def one(i: int) -> object:
            try:
                return await stub.CreateChatCompletion(
                    chat(f"Tell me fact number {i}", max_tokens=8, cache="bypass"),
                    metadata=auth(key),
                    timeout=CLIENT_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as err:
                return err

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        await asyncio.sleep(1.0)
        fault_mesh.kill("inference-1")
        results = await asyncio.gather(*tasks)

        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        ok = [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) + len(ok) == 200
        assert ok, "the surviving replica kept serving"
        for err in errors:
            assert err.code() in ROUTER_ERRORS, (err.code(), err.details())
            assert err.details() and err.details() != "Deadline Exceeded", "every error comes from the router"

        assert await wait_for(lambda: _is(fault_mesh.redis_url, victim, {"open", "half_open"}), 15)
        metrics_port = fault_mesh.ports["router-0-metrics"]
        assert metric(metrics_port, "llmesh_router_breaker_state", victim) in (1.0, 2.0)

        # While the replica is down, requests still succeed on the survivor.
        resp = await stub.CreateChatCompletion(chat("still there?", cache="bypass"), metadata=auth(key))
        assert resp.route.attempts[-1].endswith(":ok")

        # Bring it back on the same port: a probe gets through and the breaker closes.
        fault_mesh.procs["inference-1"].start()
        port = fault_mesh.ports["inference-1"]
        fault_mesh.procs["inference-1"].wait_until(lambda: grpc_serving(port), 120, "SERVING")

        async def closed() -> bool:
            await stub.CreateChatCompletion(chat("probe", cache="bypass", max_tokens=2), metadata=auth(key))
            return await breaker_state(fault_mesh.redis_url, victim) == "closed"

        assert await wait_for(closed, timeout_s=30, every_s=0.3)


async def _is(redis_url: str, addr: str, states: set[str]) -> bool:
    return await breaker_state(redis_url, addr) in states
