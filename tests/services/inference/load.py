"""Waiting on an inference replica's reported load, for tests that fill or drain its queue."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc


async def until_load(
    stub: pb_grpc.InferenceServiceStub, running: int, queued: int, polls: int = 1000
) -> pb.GetLoadResponse:
    """Poll GetLoad until it reports `running` and `queued` (every 10 ms, `polls` times)."""
    for _ in range(polls):
        load = await stub.GetLoad(pb.GetLoadRequest())
        if (load.running, load.queued) == (running, queued):
            return load
        await asyncio.sleep(0.01)
    raise AssertionError(f"load never reached running={running} queued={queued}: {load}")


async def idle(stub: pb_grpc.InferenceServiceStub) -> pb.GetLoadResponse:
    """Wait until nothing runs or waits."""
    return await until_load(stub, 0, 0)


async def fill(
    stub: pb_grpc.InferenceServiceStub, model: str, prompt: Sequence[int], running: int, queued: int
) -> tuple[pb.GenerateStreamRequest, list[Any], pb.GetLoadResponse]:
    """Start long generations until `running` decode and `queued` wait; the calls, to cancel after."""
    request = pb.GenerateStreamRequest(
        model=model, prompt_token_ids=list(prompt), sampling=gen_pb.SamplingParams(max_tokens=300)
    )
    calls = []
    for _ in range(running):
        calls.append(stub.GenerateStream(request))
        await calls[-1].read()  # its first token: it is in the batch
    calls += [stub.GenerateStream(request) for _ in range(queued)]
    return request, calls, await until_load(stub, running, queued)
