"""One real inference server (int8, embedded backend) on 127.0.0.1:0 for the whole session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from llmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

from libs.runtime.server import GrpcService
from services.inference.server import build_server
from services.inference.settings import InferenceSettings
from tests.models import MODELS, ensure_int8


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def server() -> AsyncIterator[GrpcService]:
    ensure_int8()
    settings = InferenceSettings(
        port=0,
        metrics_port=-1,
        models_dir=MODELS,
        models="smollm2-135m-int8",
        backend="embedded",
        max_batch=4,
        max_queue=2,
        max_context=512,
        grace_period_s=1.0,
    )
    service = build_server(settings, CollectorRegistry())
    await service.start()
    yield service
    await service.stop(1.0)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def channel(server: GrpcService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(channel)


@pytest.fixture(scope="session")
def chat():
    tok = Tokenizer.from_file(str(ensure_int8() / "tokenizer.json"))

    def render(question: str) -> list[int]:
        return tok.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n").ids

    return render
