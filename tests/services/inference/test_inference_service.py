"""InferenceService over a real grpc.aio server, called through the generated stub."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

from tests.services.inference.load import fill, idle

pytestmark = pytest.mark.asyncio(loop_scope="session")
MODEL = "smollm2-135m-int8"
Chat = Callable[[str], list[int]]


async def test_health_is_serving_after_load(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "llmesh.inference.v1.InferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_list_models(stub: pb_grpc.InferenceServiceStub) -> None:
    reply = await stub.ListModels(pb.ListModelsRequest())
    assert [m.name for m in reply.models] == [MODEL]
    info = reply.models[0]
    assert info.backend == "embedded" and info.precision == "int8"
    assert info.context_length == 512
    assert len(info.version) == 12


async def test_generate_greedy(stub: pb_grpc.InferenceServiceStub, chat: Chat) -> None:
    prompt = chat("What is the capital of France?")
    reply = await stub.Generate(
        pb.GenerateRequest(
            model=MODEL, prompt_token_ids=prompt, sampling=gen_pb.SamplingParams(max_tokens=40)
        )
    )
    assert "Paris" in reply.text
    assert reply.finish_reason == gen_pb.FINISH_REASON_STOP
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(reply.token_ids)
    assert reply.usage.total_tokens == len(prompt) + len(reply.token_ids)
    assert reply.model_version.startswith(MODEL + "@")
    assert reply.time_to_first_token_ms > 0


async def test_stream_matches_unary(stub: pb_grpc.InferenceServiceStub, chat: Chat) -> None:
    prompt = chat("Describe the sea in two sentences.")
    params = gen_pb.SamplingParams(max_tokens=24)
    unary = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt_token_ids=prompt, sampling=params))
    msgs = [
        m
        async for m in stub.GenerateStream(
            pb.GenerateStreamRequest(model=MODEL, prompt_token_ids=prompt, sampling=params)
        )
    ]
    assert "".join(m.text for m in msgs) == unary.text
    assert [t for m in msgs for t in m.token_ids] == list(unary.token_ids)
    assert msgs[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert msgs[-1].usage.completion_tokens == 24
    assert all(m.finish_reason == gen_pb.FINISH_REASON_UNSPECIFIED for m in msgs[:-1])


async def test_unknown_model_is_not_found(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(pb.GenerateRequest(model="nope-int8", prompt_token_ids=[1, 2]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_over_long_prompt_is_invalid_argument(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(
            pb.GenerateRequest(
                model=MODEL, prompt_token_ids=[42] * 500, sampling=gen_pb.SamplingParams(max_tokens=100)
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "512" in (err.value.details() or "")


async def test_cancelled_stream_frees_the_slot(stub: pb_grpc.InferenceServiceStub, chat: Chat) -> None:
    await idle(stub)
    call = stub.GenerateStream(
        pb.GenerateStreamRequest(
            model=MODEL,
            prompt_token_ids=chat("Write a long essay."),
            sampling=gen_pb.SamplingParams(max_tokens=400),
        )
    )
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    assert (await stub.GetLoad(pb.GetLoadRequest())).running == 1
    call.cancel()
    load = await idle(stub)
    assert load.max_batch == 4 and load.max_queue == 2


async def test_queue_full_is_resource_exhausted(stub: pb_grpc.InferenceServiceStub, chat: Chat) -> None:
    await idle(stub)
    request, calls, _ = await fill(stub, MODEL, chat("Write a long essay."), running=4, queued=2)
    refused = stub.GenerateStream(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await refused.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for c in [*calls, refused]:
        c.cancel()
    await idle(stub)
