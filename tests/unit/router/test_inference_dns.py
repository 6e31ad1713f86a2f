"""A `dns:///name:port` inference address: one replica per resolved address, kept in step with DNS.

The resolver is injected (pods appear and vanish between two answers); no call reaches a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc
import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb

from libs.runtime.errors import Unavailable
from services.router.backends import BackendRequest, GenDelta
from services.router.inference_client import (
    DnsName,
    InferenceReplicas,
    Replica,
    parse_dns_name,
    resolve_host,
)
from services.router.registry import ModelSpec

MODEL = "smollm2-135m-int8"
SPEC = ModelSpec(name="smol", backend_model=MODEL, context_length=2048, input_price_per_1k=0,
                 output_price_per_1k=0, tier=1)  # fmt: skip
REQUEST = BackendRequest(prompt_token_ids=[1, 2, 3], sampling=gen_pb.SamplingParams(), request_id="r")


class Pods:
    """A resolver whose answer the test changes; counts the questions it was asked."""

    def __init__(self, *ips: str) -> None:
        self.ips: list[str] = list(ips)
        self.error: OSError | None = None
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if self.error is not None:
            raise self.error
        return list(self.ips)


class _Call:
    """A GenerateStream call that yields what the test puts in its queue (None ends it)."""

    def __init__(self, chunks: asyncio.Queue[str | None]) -> None:
        self.chunks = chunks
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[pb.GenerateStreamResponse]:
        return self._read()

    async def _read(self) -> AsyncIterator[pb.GenerateStreamResponse]:
        while (text := await self.chunks.get()) is not None:
            yield pb.GenerateStreamResponse(text=text)

    def cancel(self) -> None:
        self.cancelled = True


class _Stub:
    def __init__(self) -> None:
        self.chunks: asyncio.Queue[str | None] = asyncio.Queue()

    def GenerateStream(self, request: pb.GenerateStreamRequest, timeout: float) -> _Call:
        return _Call(self.chunks)


def _addrs(backend: InferenceReplicas) -> list[str]:
    return [r.addr for r in backend.replicas]


def _replica(backend: InferenceReplicas, addr: str) -> Replica:
    (r,) = [r for r in backend.replicas if r.addr == addr]
    return r


@pytest.fixture
async def pods() -> Pods:
    return Pods("10.0.0.1", "10.0.0.2")


@pytest.fixture
async def backend(pods: Pods) -> AsyncIterator[InferenceReplicas]:
    b = InferenceReplicas(["dns:///inference:50055"], resolver=pods, poll_s=60, resolve_s=60)
    yield b
    await b.stop()


def test_dns_addresses_parse_and_others_are_left_alone() -> None:
    assert parse_dns_name("dns:///inference:50055") == DnsName("inference", 50055)
    assert parse_dns_name("dns:inference.llmesh.svc:50055") == DnsName("inference.llmesh.svc", 50055)
    assert parse_dns_name("127.0.0.1:50055") is None
    assert parse_dns_name("inference:50055") is None
    assert DnsName("x", 1).address("fd00::7") == "[fd00::7]:1"
    with pytest.raises(ValueError, match="DNS server"):
        parse_dns_name("dns://8.8.8.8/inference:50055")
    with pytest.raises(ValueError, match="dns:///host:port"):
        parse_dns_name("dns:///inference")


async def test_each_resolved_address_is_a_replica_of_its_own(backend: InferenceReplicas, pods: Pods) -> None:
    assert backend.replicas == [], "nothing is known before the first answer"
    await backend.resolve_once()
    assert pods.asked == [("inference", 50055)]
    assert _addrs(backend) == ["10.0.0.1:50055", "10.0.0.2:50055"]
    a, b = backend.replicas
    assert a.channel is not b.channel
    assert {t.breaker_key for t in backend.targets(SPEC)} == {
        "llmesh:10.0.0.1:50055",
        "llmesh:10.0.0.2:50055",
    }
    # Load balancing sees both: the busier pod goes second.
    a.load, b.load = 5, 0
    assert [t.info["addr"] for t in backend.targets(SPEC)] == ["10.0.0.2:50055", "10.0.0.1:50055"]


async def test_pods_that_appear_join_and_pods_that_vanish_retire(
    backend: InferenceReplicas, pods: Pods
) -> None:
    await backend.resolve_once()
    first = _replica(backend, "10.0.0.1:50055")
    kept = _replica(backend, "10.0.0.2:50055")
    gone_target = first.target

    pods.ips = ["10.0.0.2", "10.0.0.3"]
    await backend.resolve_once()
    assert _addrs(backend) == ["10.0.0.2:50055", "10.0.0.3:50055"]
    assert _replica(backend, "10.0.0.2:50055") is kept, "a pod still in DNS keeps its replica and state"
    assert all(t.info["addr"] != "10.0.0.1:50055" for t in backend.targets(SPEC))
    await asyncio.sleep(0)  # the idle retired channel closes in the background
    assert first.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    with pytest.raises(Unavailable) as err:
        await anext(backend.stream(SPEC, gone_target, REQUEST, 1.0))
    assert err.value.reason == "REPLICA_GONE"


async def test_a_retired_replica_finishes_its_running_calls(backend: InferenceReplicas, pods: Pods) -> None:
    await backend.resolve_once()
    busy = _replica(backend, "10.0.0.1:50055")
    stub = _Stub()
    busy.stub = cast(Any, stub)
    stream = backend.stream(SPEC, busy.target, REQUEST, 5.0)
    await stub.chunks.put("one")
    assert await anext(stream) == GenDelta(text="one")

    pods.ips = ["10.0.0.2"]
    await backend.resolve_once()
    assert _addrs(backend) == ["10.0.0.2:50055"]
    await asyncio.sleep(0)
    assert busy.retired and busy.channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN

    await stub.chunks.put("two")
    assert await anext(stream) == GenDelta(text="two"), "the running call goes on after the pod left DNS"
    await stub.chunks.put(None)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await asyncio.sleep(0)
    assert busy.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN, "closed once its last call ended"


async def test_a_pod_back_before_its_calls_end_is_the_same_replica(
    backend: InferenceReplicas, pods: Pods
) -> None:
    await backend.resolve_once()
    busy = _replica(backend, "10.0.0.1:50055")
    stub = _Stub()
    busy.stub = cast(Any, stub)
    stream = backend.stream(SPEC, busy.target, REQUEST, 5.0)
    await stub.chunks.put("one")
    await anext(stream)
    pods.ips = ["10.0.0.2"]
    await backend.resolve_once()
    pods.ips = ["10.0.0.1", "10.0.0.2"]
    await backend.resolve_once()
    assert _replica(backend, "10.0.0.1:50055") is busy and not busy.retired
    await stub.chunks.put(None)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await asyncio.sleep(0)
    assert busy.channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN, "back in service: left open"


async def test_a_failed_or_empty_answer_keeps_the_known_replicas(
    backend: InferenceReplicas, pods: Pods
) -> None:
    await backend.resolve_once()
    pods.error = OSError("Name or service not known")
    await backend.resolve_once()
    assert _addrs(backend) == ["10.0.0.1:50055", "10.0.0.2:50055"]
    pods.error, pods.ips = None, []
    await backend.resolve_once()
    assert _addrs(backend) == ["10.0.0.1:50055", "10.0.0.2:50055"]


async def test_dns_names_and_plain_addresses_mix(pods: Pods) -> None:
    backend = InferenceReplicas(
        ["127.0.0.1:50055", "dns:///inference:50055", "dns:///inference:50055"], resolver=pods
    )
    try:
        await backend.resolve_once()
        assert [r.name for r in backend.replicas] == [
            "inference-0",
            "inference-10.0.0.1:50055",
            "inference-10.0.0.2:50055",
        ]
        assert len(pods.asked) == 1, "a name given twice is resolved once"
    finally:
        await backend.stop()


async def test_the_background_loop_resolves_again() -> None:
    # Loopback addresses on a closed port: the polls fail at once, without leaving the machine.
    pods = Pods("127.0.0.1")
    backend = InferenceReplicas(["dns:///inference:1"], resolver=pods, poll_s=0.01, resolve_s=0.01)
    try:
        await backend.start()
        assert _addrs(backend) == ["127.0.0.1:1"]
        pods.ips = ["127.0.0.2"]
        for _ in range(500):
            if _addrs(backend) == ["127.0.0.2:1"]:
                break
            await asyncio.sleep(0.01)
        assert _addrs(backend) == ["127.0.0.2:1"]
    finally:
        await backend.stop()


async def test_the_real_resolver_reads_localhost() -> None:
    assert await resolve_host("localhost", 50055) == ["127.0.0.1"]
    assert await resolve_host("127.0.0.1", 1) == ["127.0.0.1"]
    backend = InferenceReplicas(["dns:///localhost:50055"], poll_s=60)
    try:
        await backend.resolve_once()
        assert [r.addr for r in backend.replicas] == ["127.0.0.1:50055"]
        assert backend.replicas[0].target.breaker_key == "llmesh:127.0.0.1:50055"
    finally:
        await backend.stop()
