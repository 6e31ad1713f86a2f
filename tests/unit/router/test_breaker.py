"""Circuit breaker transitions (process-local store; the Redis store runs the same suite in
tests/services/router/test_shared_state.py)."""

from __future__ import annotations

import pytest

from services.router.breaker import BreakerConfig, Breakers, BreakerState, MemoryBreakerStore

CFG = BreakerConfig(failures=3, open_s=10.0, probe_s=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breakers(clock: Clock) -> Breakers:
    return Breakers(MemoryBreakerStore(), CFG, clock=clock)


async def fail(b: Breakers, n: int, backend: str = "r0") -> BreakerState:
    state = BreakerState.CLOSED
    for _ in range(n):
        adm = await b.admit(backend)
        assert adm.allowed
        state = await b.record(backend, False, adm)
    return state


async def test_consecutive_failures_open_and_a_success_resets_the_count(breakers: Breakers) -> None:
    assert await fail(breakers, 2) == BreakerState.CLOSED
    adm = await breakers.admit("r0")
    assert await breakers.record("r0", True, adm) == BreakerState.CLOSED
    assert await fail(breakers, 2) == BreakerState.CLOSED
    assert await fail(breakers, 1) == BreakerState.OPEN
    refused = await breakers.admit("r0")
    assert not refused.allowed and refused.state == BreakerState.OPEN
    assert refused.retry_in_s == pytest.approx(10.0)
    assert (await breakers.admit("r1")).allowed, "breakers are per backend"


async def test_half_open_admits_one_probe_and_its_success_closes(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    clock.now += 10.0
    probe = await breakers.admit("r0")
    assert probe.allowed and probe.probe and probe.state == BreakerState.HALF_OPEN
    second = await breakers.admit("r0")
    assert not second.allowed and second.state == BreakerState.HALF_OPEN
    assert await breakers.record("r0", True, probe) == BreakerState.CLOSED
    assert (await breakers.admit("r0")).allowed


async def test_failed_probe_opens_again_for_a_full_period(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    clock.now += 10.0
    probe = await breakers.admit("r0")
    assert await breakers.record("r0", False, probe) == BreakerState.OPEN
    clock.now += 9.0
    assert not (await breakers.admit("r0")).allowed
    clock.now += 1.0
    assert (await breakers.admit("r0")).probe


async def test_lost_probe_frees_its_slot_after_probe_s(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    clock.now += 10.0
    assert (await breakers.admit("r0")).probe
    clock.now += 1.0
    assert not (await breakers.admit("r0")).allowed
    clock.now += 1.0
    assert (await breakers.admit("r0")).probe


async def test_released_probe_lets_the_next_call_probe(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    clock.now += 10.0
    probe = await breakers.admit("r0")
    await breakers.release("r0", probe)
    assert (await breakers.admit("r0")).probe


async def test_results_of_calls_admitted_before_opening_are_ignored(breakers: Breakers, clock: Clock) -> None:
    early = [await breakers.admit("r0") for _ in range(5)]
    for adm in early[:3]:
        await breakers.record("r0", False, adm)
    assert await breakers.state("r0") == BreakerState.OPEN
    assert await breakers.record("r0", True, early[3]) == BreakerState.OPEN
    clock.now += 10.0
    probe = await breakers.admit("r0")
    await breakers.record("r0", True, probe)
    assert await breakers.record("r0", False, early[4]) == BreakerState.CLOSED


async def test_state_changes_are_reported(clock: Clock) -> None:
    seen: list[tuple[str, BreakerState]] = []
    b = Breakers(MemoryBreakerStore(), CFG, clock=clock, on_state=lambda k, s: seen.append((k, s)))
    await fail(b, 3)
    clock.now += 10.0
    probe = await b.admit("r0")
    await b.record("r0", True, probe)
    assert [s for _, s in seen] == [
        BreakerState.CLOSED,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


class BrokenStore(MemoryBreakerStore):
    async def admit(self, *a, **kw):
        raise ConnectionError("redis down")

    async def record(self, *a, **kw):
        raise ConnectionError("redis down")


async def test_unreachable_store_falls_back_to_local_state_and_says_so(clock: Clock) -> None:
    errors: list[int] = []
    b = Breakers(
        BrokenStore(),
        CFG,
        clock=clock,
        on_store_error=lambda: errors.append(1),
        store_errors=(ConnectionError,),
    )
    assert await fail(b, 3) == BreakerState.OPEN
    assert not (await b.admit("r0")).allowed
    assert len(errors) == 7
