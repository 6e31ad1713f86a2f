"""The triton backend against a real tritonserver: greedy output equals the embedded backend's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
import pytest_asyncio
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as pb
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry

from libs.launch.triton import start_triton
from libs.runtime.server import GrpcService
from services.inference.server import build_server
from services.inference.settings import InferenceSettings
from tests.models import MODELS, ensure_int8

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]
MODEL = "smollm2-135m-int8"
Chat = Callable[[str], list[int]]


@pytest.fixture(scope="module")
def tritonserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ensure_int8()
    proc, grpc_port = start_triton(
        tmp_path_factory.mktemp("triton") / "tritonserver.log", ready_model=MODEL, timeout_s=120
    )
    try:
        yield f"127.0.0.1:{grpc_port}"
    finally:
        proc.stop(grace_s=10)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def triton_stub(tritonserver: str) -> AsyncIterator[pb_grpc.InferenceServiceStub]:
    settings = InferenceSettings(
        port=0,
        metrics_port=-1,
        models_dir=MODELS,
        models=MODEL,
        triton_url=tritonserver,
        grace_period_s=1.0,
    )
    assert settings.resolved_backend == "triton"
    service: GrpcService = build_server(settings, CollectorRegistry())
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield pb_grpc.InferenceServiceStub(channel)
    await service.stop(1.0)


async def test_list_models_reports_triton(triton_stub: pb_grpc.InferenceServiceStub) -> None:
    reply = await triton_stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.backend) for m in reply.models] == [(MODEL, "triton")]


async def test_greedy_matches_embedded(
    triton_stub: pb_grpc.InferenceServiceStub, stub: pb_grpc.InferenceServiceStub, chat: Chat
) -> None:
    questions = ["What is the capital of France?", "Write a haiku about rain.", "List three animals."]
    params = gen_pb.SamplingParams(max_tokens=32)

    async def both(q: str) -> tuple[pb.GenerateResponse, pb.GenerateResponse]:
        request = pb.GenerateRequest(model=MODEL, prompt_token_ids=chat(q), sampling=params)
        return await triton_stub.Generate(request), await stub.Generate(request)

    results = await asyncio.gather(*[both(q) for q in questions])
    for via_triton, embedded in results:
        assert list(via_triton.token_ids) == list(embedded.token_ids)
        assert via_triton.text == embedded.text
        assert via_triton.finish_reason == embedded.finish_reason
        assert via_triton.usage == embedded.usage


async def test_stop_sequence_and_stream(
    triton_stub: pb_grpc.InferenceServiceStub, stub: pb_grpc.InferenceServiceStub, chat: Chat
) -> None:
    prompt = chat("Write a long story about a dragon.")
    full = await stub.Generate(
        pb.GenerateRequest(
            model=MODEL, prompt_token_ids=prompt, sampling=gen_pb.SamplingParams(max_tokens=30)
        )
    )
    stop = " " + full.text.split()[len(full.text.split()) // 2]
    params = gen_pb.SamplingParams(max_tokens=30, stop=[stop])
    msgs = [
        m
        async for m in triton_stub.GenerateStream(
            pb.GenerateStreamRequest(model=MODEL, prompt_token_ids=prompt, sampling=params)
        )
    ]
    assert "".join(m.text for m in msgs) == full.text[: full.text.index(stop)]
    assert msgs[-1].finish_reason == gen_pb.FINISH_REASON_STOP
