"""Fixtures for the edge unit tests: one throw-away redis-server for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from libs.testing.redis_server import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def redis_client(redis_proc: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()
