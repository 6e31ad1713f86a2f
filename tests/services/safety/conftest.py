"""Fixtures: the safety service as a real grpc.aio server on loopback, models built once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from llmesh.safety.v1 import safety_service_pb2_grpc as pb_grpc

from libs.embedding.build import build
from libs.runtime.server import GrpcService
from services.safety.server import build_server
from services.safety.settings import SafetySettings
from services.safety.train import train

ROOT = Path(__file__).resolve().parents[3]
MODEL_DIR = ROOT / "build" / "models" / "minilm"
HEAD_DIR = ROOT / "build" / "safety"


@pytest.fixture(scope="session")
def safety_settings() -> SafetySettings:
    build(MODEL_DIR)
    train(HEAD_DIR, MODEL_DIR)
    return SafetySettings(
        port=0, metrics_port=-1, model_dir=MODEL_DIR, head_dir=HEAD_DIR, max_text_chars=10_000
    )


@pytest.fixture(scope="module")
async def served(
    safety_settings: SafetySettings,
) -> AsyncIterator[tuple[GrpcService, pb_grpc.SafetyServiceStub]]:
    service = build_server(safety_settings)
    await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield service, pb_grpc.SafetyServiceStub(channel)
    finally:
        await channel.close()
        await service.stop(grace_s=1)
