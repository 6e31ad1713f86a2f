"""State router replicas share through Redis: breakers (the Lua store) and budgets (holds)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from libs.runtime.errors import ResourceExhausted
from libs.testing.redis_server import RedisServer, redis_server
from services.router.accounting import Accounting
from services.router.breaker import BreakerConfig, Breakers, BreakerState, RedisBreakerStore

CFG = BreakerConfig(failures=3, open_s=10.0, probe_s=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(log_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis(redis_proc: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_two_replicas_see_the_same_breaker(redis: aioredis.Redis) -> None:
    clock = Clock()
    a = Breakers(RedisBreakerStore(redis), CFG, clock=clock)
    b = Breakers(RedisBreakerStore(redis), CFG, clock=clock)
    for replica in (a, b, a):
        adm = await replica.admit("llmesh:r0")
        await replica.record("llmesh:r0", False, adm)
    assert await b.state("llmesh:r0") == BreakerState.OPEN
    assert not (await b.admit("llmesh:r0")).allowed
    clock.now += 10.0
    probe = await a.admit("llmesh:r0")
    assert probe.probe
    assert not (await b.admit("llmesh:r0")).allowed, "only one probe across replicas"
    await a.record("llmesh:r0", True, probe)
    assert (await b.admit("llmesh:r0")).allowed and await b.state("llmesh:r0") == BreakerState.CLOSED


async def test_redis_store_ignores_late_results_and_reopens_on_a_failed_probe(redis: aioredis.Redis) -> None:
    clock = Clock()
    br = Breakers(RedisBreakerStore(redis), CFG, clock=clock)
    early = [await br.admit("x") for _ in range(4)]
    for adm in early[:3]:
        await br.record("x", False, adm)
    assert await br.record("x", True, early[3]) == BreakerState.OPEN
    clock.now += 10.0
    probe = await br.admit("x")
    assert await br.record("x", False, probe) == BreakerState.OPEN
    clock.now += 5.0
    assert not (await br.admit("x")).allowed
    clock.now += 5.0
    probe = await br.admit("x")
    await br.release("x", probe)
    assert (await br.admit("x")).probe


async def test_concurrent_holds_never_overspend_the_budget(redis: aioredis.Redis) -> None:
    replicas = [Accounting(redis), Accounting(redis)]
    budget, hold = 1.0, 0.3

    async def one(i: int) -> bool:
        try:
            res = await replicas[i % 2].reserve("k1", hold, budget, 0)
        except ResourceExhausted as exc:
            assert exc.reason == "BUDGET_EXHAUSTED"
            return False
        await asyncio.sleep(0.01)
        await replicas[i % 2].commit(res, "m", 10, 20, 0.25)
        return True

    results = await asyncio.gather(*(one(i) for i in range(12)))
    usage = await replicas[0].usage("k1", "day", budget)
    assert usage.spent_usd <= budget
    assert usage.totals.requests == sum(results) >= 3
    assert usage.reserved_usd == pytest.approx(0.0, abs=1e-9)
    assert usage.models["m"].prompt_tokens == 10 * sum(results)


async def test_exhausted_budget_reports_the_window_and_a_retry_time(redis: aioredis.Redis) -> None:
    acct = Accounting(redis)
    res = await acct.reserve("k2", 0.5, 0, 1.0)
    await acct.commit(res, "m", 1, 1, 1.0)
    with pytest.raises(ResourceExhausted) as err:
        await acct.reserve("k2", 0.01, 0, 1.0)
    assert "month budget" in err.value.message and err.value.metadata["window"] == "month"
    assert (err.value.retry_after_s() or 0) > 0
    released = await acct.reserve("k3", 0.4, 1.0, 0)
    await acct.release(released)
    assert (await acct.usage("k3", "day", 1.0)).reserved_usd == pytest.approx(0.0, abs=1e-9)
    assert (await acct.usage("k3", "day", 1.0)).totals.requests == 0
