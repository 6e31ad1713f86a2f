"""Replicas on one machine: two routers and two inference replicas behind one Envoy.

All shared state lives in Redis, so a key's rate limit holds across both routers; taking an
inference replica out mid-load (SIGTERM: it reports NOT_SERVING, drains, exits) loses no request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from llmesh.common.v1 import generation_pb2 as common
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.launch.mesh import Mesh, MeshConfig
from tests.conftest import create_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    cfg = MeshConfig(workdir=tmp_path_factory.mktemp("replicas"), router_replicas=2, inference_replicas=2)
    m = Mesh(cfg).start()
    try:
        yield m
    finally:
        m.stop()


def _chat(text: str, max_tokens: int = 8) -> pb.StreamChatCompletionRequest:
    return pb.StreamChatCompletionRequest(
        messages=[common.ChatMessage(role="user", content=text)],
        options=pb.GenerationOptions(
            model="smollm2",
            cache="bypass",
            sampling=common.SamplingParams(temperature=0, max_tokens=max_tokens),
        ),
    )


async def _stream(stub: pb_grpc.RouterServiceStub, key: str, text: str, max_tokens: int = 8) -> str:
    parts = []
    call = stub.StreamChatCompletion(
        _chat(text, max_tokens), metadata=[("authorization", f"Bearer {key}")], timeout=120
    )
    async for chunk in call:
        parts += [c.content for c in chunk.choices]
    return "".join(parts)


async def test_rate_limit_is_shared_by_both_routers(replicas: Mesh) -> None:
    key = await asyncio.to_thread(create_key, replicas.redis_url, "replica-limits", rpm=4)
    outcomes: list[str] = []
    channels = [grpc.aio.insecure_channel(replicas.addr(f"router-{i}")) for i in (0, 1)]
    try:
        for i in range(8):
            stub = pb_grpc.RouterServiceStub(channels[i % 2])
            try:
                await _stream(stub, key, f"Say the word number {i}.", max_tokens=2)
                outcomes.append("ok")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                outcomes.append("limited")
    finally:
        for ch in channels:
            await ch.close()
    assert outcomes.count("ok") == 4, outcomes
    assert outcomes[:4] == ["ok"] * 4


async def test_removing_an_inference_replica_mid_load_loses_no_request(replicas: Mesh) -> None:
    key = await asyncio.to_thread(create_key, replicas.redis_url, "replica-drain")
    async with grpc.aio.insecure_channel(replicas.url.removeprefix("http://")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        topics = ["the sea", "a mountain", "autumn", "a city at night", "bread", "a bicycle", "rain", "music"]
        prompts = [f"Write one sentence about {topics[i % len(topics)]}." for i in range(24)]

        async def staggered(i: int, text: str) -> str:
            await asyncio.sleep(0.15 * i)
            return await _stream(stub, key, text, max_tokens=12)

        tasks = [asyncio.ensure_future(staggered(i, t)) for i, t in enumerate(prompts)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(replicas.procs["inference-1"].stop, 30)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], [repr(f) for f in failures]
    assert all(text.strip() for text in results if isinstance(text, str))
    assert (
        replicas.procs["inference-1"].popen is not None
        and replicas.procs["inference-1"].popen.returncode == 0
    )
