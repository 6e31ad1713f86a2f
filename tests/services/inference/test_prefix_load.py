"""GetLoad reports the digests of the prompt prefixes a replica's prefix cache holds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from services.inference.prefix_cache import chain_digests, wire_digest
from services.inference.servicer import MAX_PREFIX_DIGESTS

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
