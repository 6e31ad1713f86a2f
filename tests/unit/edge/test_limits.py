"""The RPM/TPM Lua buckets against a real redis-server; two limiters stand for two replicas."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from libs.keys import KeyRecord
from libs.runtime.errors import ResourceExhausted, Unavailable
from libs.testing.redis_server import RedisServer
from services.router.limits import RateLimiter


def key(key_id: str = "00000000000000aa", rpm: int = 0, tpm: int = 0) -> KeyRecord:
    return KeyRecord(key_id=key_id, tenant="t", rpm=rpm, tpm=tpm)


async def test_unlimited_key_never_touches_redis(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    for _ in range(50):
        state = await limiter.acquire(key(), 10_000)
    assert (state.remaining_requests, state.remaining_tokens) == (-1, -1)
    assert await redis_client.keys("llmesh:rl:*") == []


async def test_two_replicas_share_one_rpm_bucket(
    redis_proc: RedisServer, redis_client: aioredis.Redis
) -> None:
    other_client = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
    try:
        a, b = RateLimiter(redis_client), RateLimiter(other_client)
        record = key(rpm=6)
        results = await asyncio.gather(
            *[(a if i % 2 else b).acquire(record, 0) for i in range(10)], return_exceptions=True
        )
    finally:
        await other_client.aclose()
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(granted) == 6 and len(refused) == 4
    assert sorted(g.remaining_requests for g in granted) == [0, 1, 2, 3, 4, 5]
    err = refused[0]
    assert "6 requests per minute" in err.message
    assert err.metadata["limit"] == "rpm"
    retry = err.retry_after_s()
    assert retry is not None and 0 < retry <= 10.0  # one request refills in 60/6 s


async def test_tpm_refusal_takes_nothing_from_rpm(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    record = key(rpm=5, tpm=100)
    first = await limiter.acquire(record, 80)
    assert (first.remaining_requests, first.remaining_tokens) == (4, 20)
    with pytest.raises(ResourceExhausted) as info:
        await limiter.acquire(record, 50)
    assert "100 tokens per minute" in info.value.message
    assert info.value.metadata["limit"] == "tpm"
    retry = info.value.retry_after_s()
    assert retry is not None and 10 < retry <= 19  # 30 tokens at 100/60 per second
    ok = await limiter.acquire(record, 20)
    assert ok.remaining_requests == 3  # the refused call did not spend a request


async def test_request_larger_than_tpm_is_refused_up_front(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    with pytest.raises(ResourceExhausted) as info:
        await limiter.acquire(key(tpm=100), 101)
    assert info.value.reason == "TPM_REQUEST_TOO_LARGE"
    assert await redis_client.keys("llmesh:rl:*") == []


async def test_adjust_returns_unused_tokens_and_can_overdraw(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    record = key(tpm=1000)
    await limiter.acquire(record, 600)  # reserve prompt + max_tokens
    settled = await limiter.adjust(record, reserved_tokens=600, actual_tokens=150)
    assert 850 <= settled.remaining_tokens <= 851  # refill during the test adds at most a token
    over = await limiter.adjust(record, reserved_tokens=0, actual_tokens=900)  # estimate far too low
    assert over.remaining_tokens < 0
    with pytest.raises(ResourceExhausted):
        await limiter.acquire(record, 1)


async def test_refund_gives_back_request_and_tokens(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    record = key(rpm=2, tpm=100)
    await limiter.acquire(record, 50)
    await limiter.acquire(record, 50)
    with pytest.raises(ResourceExhausted) as info:
        await limiter.acquire(record, 10)
    assert info.value.metadata["limit"] == "rpm,tpm"
    back = await limiter.refund(record, 50)
    assert back.remaining_requests == 1 and 50 <= back.remaining_tokens <= 51
    assert (await limiter.acquire(record, 10)).remaining_requests == 0


async def test_buckets_expire_once_full(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    record = key(rpm=60, tpm=6000)
    await limiter.acquire(record, 60)
    for name in await redis_client.keys("llmesh:rl:*"):
        ttl = await redis_client.pttl(name)
        assert 0 < ttl <= 2_100  # one request at 1/s, 60 tokens at 100/s, + 1 s slack


async def test_redis_down_is_unavailable() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(Unavailable):
            await RateLimiter(client).acquire(key(rpm=1), 1)
    finally:
        await client.aclose()
