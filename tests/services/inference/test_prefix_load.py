"""GetLoad reports the digests of the prompt prefixes a replica's prefix cache holds, in the form
the router's replica choice reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from libs.runtime.server import GrpcService
from services.inference.prefix_cache import chain_digests, wire_digest
from services.inference.servicer import MAX_PREFIX_DIGESTS
from services.router.inference_client import InferenceReplicas, cached_prefix_tokens, prefix_digests

pytestmark = pytest.mark.asyncio(loop_scope="session")
MODEL = "smollm2-135m-int8"
Chat = Callable[[str], list[int]]


async def test_get_load_reports_cached_prefix_digests(stub: pb_grpc.InferenceServiceStub, chat: Chat) -> None:
    prompt = chat("Tell me three facts about the prefix cache of this replica, in order.")
    await stub.Generate(
        pb.GenerateRequest(model=MODEL, prompt_token_ids=prompt, sampling=gen_pb.SamplingParams(max_tokens=2))
    )
    load = await stub.GetLoad(pb.GetLoadRequest(max_prefix_digests=MAX_PREFIX_DIGESTS))
    (summary,) = load.prefix_caches
    assert summary.model == MODEL and summary.block_size > 0
    expected = [wire_digest(d) for d in chain_digests(prompt, summary.block_size)]
    assert expected and set(expected) <= set(summary.block_digests)

    one = await stub.GetLoad(pb.GetLoadRequest(max_prefix_digests=1))
    assert len(one.prefix_caches[0].block_digests) == 1


async def test_get_load_without_asking_reports_no_digests(stub: pb_grpc.InferenceServiceStub) -> None:
    load = await stub.GetLoad(pb.GetLoadRequest())
    assert len(load.prefix_caches) == 0


async def test_router_poll_sees_the_prefix_this_replica_holds(server: GrpcService, chat: Chat) -> None:
    prompt = chat("Which replica holds the prefix of this question about routing?")
    backend = InferenceReplicas([f"127.0.0.1:{server.port}"], poll_s=60)
    try:
        await backend.poll_once()
        (replica,) = backend.replicas
        held = replica.prefixes[MODEL]
        digests = prefix_digests(prompt, held.block_size)
        assert cached_prefix_tokens(digests, held.block_size, held.digests) == 0
        await replica.stub.Generate(
            pb.GenerateRequest(
                model=MODEL, prompt_token_ids=prompt, sampling=gen_pb.SamplingParams(max_tokens=1)
            )
        )
        await backend.poll_once()
        held = replica.prefixes[MODEL]
        assert (
            cached_prefix_tokens(digests, held.block_size, held.digests) == len(digests) * held.block_size > 0
        )
    finally:
        await backend.stop()
