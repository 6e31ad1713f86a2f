"""Fixtures: a real Redis per module, and cache servers (grpc.aio on loopback) built on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmesh.cache.v1 import cache_service_pb2_grpc as pb_grpc

from libs.embedding.build import build
from libs.runtime.server import GrpcService
from libs.testing.redis_server import RedisServer, redis_server
from services.cache.server import build_server
from services.cache.settings import CacheSettings

MODEL_DIR = Path(__file__).resolve().parents[3] / "build" / "models" / "minilm"
Served = tuple[GrpcService, pb_grpc.CacheServiceStub]
ServerFactory = Callable[..., AbstractAsyncContextManager[Served]]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The sentence embedder, built once (idempotent)."""
    build(MODEL_DIR)
    return MODEL_DIR


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throw-away redis-server, stopped by PID after the module."""
    with redis_server(log_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def make_server(model_dir: Path) -> ServerFactory:
    """`async with make_server(redis_url, **settings) as (service, stub)`."""

    @asynccontextmanager
    async def factory(redis_url: str, **overrides: Any) -> AsyncIterator[Served]:
        settings = CacheSettings(
            port=0, metrics_port=-1, redis_url=redis_url, embedding_model_dir=model_dir, **overrides
        )
        service = build_server(settings)
        await service.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        try:
            yield service, pb_grpc.CacheServiceStub(channel)
        finally:
            await channel.close()
            await service.stop(grace_s=1)

    return factory


@pytest.fixture(scope="module")
async def served(redis: RedisServer, make_server: ServerFactory) -> AsyncIterator[Served]:
    """One cache server on the module's Redis."""
    async with make_server(redis.url) as pair:
        yield pair
