"""The dispatcher's promises: retries before the first token only, under a budget; fallbacks along
the chain; breakers skip open targets; every hop recorded; failures explained by reason.

A scripted in-process backend stands in for the replicas here (the real replicas are killed under
load in tests/services/router/test_faults.py); what is under test is the policy, hop by hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.runtime.errors import (
    DeadlineExceeded,
    InvalidArgument,
    LlmeshError,
    ResourceExhausted,
    Unavailable,
)
from services.router.backends import BackendRequest, GenDelta, Target
from services.router.breaker import BreakerConfig, Breakers, BreakerState, MemoryBreakerStore
from services.router.deadline import Deadline
from services.router.dispatch import AttemptLog, Dispatcher
from services.router.registry import ModelSpec
from services.router.retry_budget import RetryBudget

# What a target does when asked: answer, or fail with this error before its first token, or
# hang (no first token in time).
OK = "ok"
HANG = "hang"
Behaviour = str | LlmeshError


def spec(name: str, *fallback: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        context_length=2048,
        input_price_per_1k=0.0,
        output_price_per_1k=0.0,
        tier=1,
        fallback=tuple(fallback),
    )


@dataclass
class ScriptedBackend:
    """Targets per model, each with a scripted behaviour; records every call it receives."""

    targets_by_model: dict[str, list[str]]
    behaviour: dict[str, Behaviour]
    calls: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def targets(self, spec: ModelSpec, prompt_token_ids: Sequence[int] = ()) -> list[Target]:
        return [Target(name, f"breaker:{name}") for name in self.targets_by_model[spec.name]]

    async def stream(
        self, spec: ModelSpec, target: Target, request: BackendRequest, timeout_s: float
    ) -> AsyncGenerator[GenDelta, None]:
        self.calls.append(target.name)
        what = self.behaviour[target.name]
        try:
            if isinstance(what, LlmeshError):
                raise what
            if what == HANG:
                await asyncio.sleep(3600)
            yield GenDelta(text="first ", tokens=1)
            yield GenDelta(text="rest", tokens=1, finish_reason=gen_pb.FINISH_REASON_STOP)
        finally:
            self.closed.append(target.name)

    def model_version(self, spec: ModelSpec) -> str:
        return "1"


REQUEST = BackendRequest(prompt_token_ids=[1, 2, 3], sampling=gen_pb.SamplingParams(), request_id="r1")


def dispatcher(
    backend: ScriptedBackend,
    *,
    budget: RetryBudget | None = None,
    breakers: Breakers | None = None,
    max_attempts: int = 4,
    first_token_timeout_s: float = 5.0,
) -> Dispatcher:
    return Dispatcher(
        {"llmesh": backend},
        breakers or Breakers(MemoryBreakerStore(), BreakerConfig(failures=2, open_s=60.0)),
        budget or RetryBudget(ratio=0.2, min_tokens=10.0),
        first_token_timeout_s=first_token_timeout_s,
        max_attempts=max_attempts,
    )


async def test_a_failed_replica_is_retried_on_the_next_one() -> None:
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": Unavailable("r0 is down"), "r1": OK})
    budget = RetryBudget(ratio=0.2, min_tokens=10.0)
    attempts = AttemptLog()
    opened = await dispatcher(backend, budget=budget).open([spec("a")], REQUEST, Deadline(10), attempts)
    assert opened.target.name == "r1" and opened.first.text == "first "
    assert backend.calls == ["r0", "r1"]
    assert attempts.hops == ["r0:a:unavailable", "r1:a:ok"]
    assert not attempts.fallback_used
    assert budget.retries == 1
    await opened.rest.aclose()


async def test_a_failed_model_falls_back_along_the_chain() -> None:
    backend = ScriptedBackend(
        {"a": ["r0"], "b": ["r9"]}, {"r0": Unavailable("down", reason="REPLICA_DOWN"), "r9": OK}
    )
    attempts = AttemptLog()
    opened = await dispatcher(backend).open([spec("a", "b"), spec("b")], REQUEST, Deadline(10), attempts)
    assert opened.spec.name == "b" and attempts.fallback_used
    assert attempts.hops == ["r0:a:replica_down", "r9:b:ok"]
    await opened.rest.aclose()


async def test_an_empty_retry_budget_stops_retries_but_not_fallbacks() -> None:
    backend = ScriptedBackend(
        {"a": ["r0", "r1"], "b": ["r9"]}, {"r0": Unavailable("down"), "r1": OK, "r9": OK}
    )
    budget = RetryBudget(ratio=0.0, min_tokens=0.0)
    attempts = AttemptLog()
    opened = await dispatcher(backend, budget=budget).open(
        [spec("a"), spec("b")], REQUEST, Deadline(10), attempts
    )
    assert backend.calls == ["r0", "r9"], "r1 would be a retry, and the budget has none"
    assert attempts.hops == ["r0:a:unavailable", "r1:a:retry_budget_exhausted", "r9:b:ok"]
    assert budget.refused == 1
    await opened.rest.aclose()


async def test_without_a_fallback_an_exhausted_budget_names_every_attempt() -> None:
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": Unavailable("r0 refused the call"), "r1": OK})
    with pytest.raises(Unavailable) as err:
        await dispatcher(backend, budget=RetryBudget(ratio=0.0, min_tokens=0.0)).open(
            [spec("a")], REQUEST, Deadline(10), AttemptLog()
        )
    assert err.value.reason == "ALL_BACKENDS_FAILED"
    assert "r0:a:unavailable" in err.value.message and "r0 refused the call" in err.value.message
    assert backend.calls == ["r0"]


async def test_every_backend_busy_is_resource_exhausted_with_a_retry_hint() -> None:
    busy = ResourceExhausted("queue full", retry_after_s=0.5)
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": busy, "r1": busy})
    with pytest.raises(ResourceExhausted) as err:
        await dispatcher(backend).open([spec("a")], REQUEST, Deadline(10), AttemptLog())
    assert err.value.reason == "BACKENDS_BUSY"
    assert err.value.retry_after_s() == pytest.approx(1.0)
    assert backend.calls == ["r0", "r1"]


async def test_open_breakers_are_skipped_and_explained() -> None:
    breakers = Breakers(MemoryBreakerStore(), BreakerConfig(failures=1, open_s=30.0))
    for name in ("r0", "r1"):
        adm = await breakers.admit(f"breaker:{name}")
        assert await breakers.record(f"breaker:{name}", False, adm) == BreakerState.OPEN
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": OK, "r1": OK})
    attempts = AttemptLog()
    with pytest.raises(Unavailable) as err:
        await dispatcher(backend, breakers=breakers).open([spec("a")], REQUEST, Deadline(10), attempts)
    assert err.value.reason == "CIRCUIT_OPEN" and "retry in" in err.value.message
    assert backend.calls == [], "an open breaker sends nothing to its target"
    assert attempts.hops == ["r0:a:breaker_open", "r1:a:breaker_open"]


async def test_failures_open_the_breaker_of_the_failing_target_only() -> None:
    breakers = Breakers(MemoryBreakerStore(), BreakerConfig(failures=2, open_s=30.0))
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": Unavailable("down"), "r1": OK})
    d = dispatcher(backend, breakers=breakers)
    for _ in range(2):
        opened = await d.open([spec("a")], REQUEST, Deadline(10), AttemptLog())
        await opened.rest.aclose()
    assert await breakers.state("breaker:r0") == BreakerState.OPEN
    assert await breakers.state("breaker:r1") == BreakerState.CLOSED
    attempts = AttemptLog()
    opened = await d.open([spec("a")], REQUEST, Deadline(10), attempts)
    assert attempts.hops == ["r0:a:breaker_open", "r1:a:ok"]
    await opened.rest.aclose()


async def test_a_silent_target_times_out_and_the_next_one_answers() -> None:
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": HANG, "r1": OK})
    attempts = AttemptLog()
    opened = await dispatcher(backend, first_token_timeout_s=0.05).open(
        [spec("a")], REQUEST, Deadline(10), attempts
    )
    assert attempts.hops == ["r0:a:first_token_timeout", "r1:a:ok"]
    assert "r0" in backend.closed, "the abandoned stream is closed, which cancels its call"
    await opened.rest.aclose()


async def test_a_bad_request_is_not_retried() -> None:
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": InvalidArgument("prompt too long"), "r1": OK})
    with pytest.raises(InvalidArgument):
        await dispatcher(backend).open([spec("a")], REQUEST, Deadline(10), AttemptLog())
    assert backend.calls == ["r0"]


async def test_attempts_are_bounded() -> None:
    names = [f"r{i}" for i in range(6)]
    backend = ScriptedBackend({"a": names}, {n: Unavailable("down") for n in names})
    with pytest.raises(Unavailable):
        await dispatcher(backend, max_attempts=3).open([spec("a")], REQUEST, Deadline(10), AttemptLog())
    assert backend.calls == ["r0", "r1", "r2"]


async def test_after_the_first_token_nothing_is_retried() -> None:
    """Once a delta is out, a failure belongs to that stream: no other target is asked, and the
    failure counts against the target that had the stream."""
    breakers = Breakers(MemoryBreakerStore(), BreakerConfig(failures=1, open_s=30.0))
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": OK, "r1": OK})
    d = dispatcher(backend, breakers=breakers)
    opened = await d.open([spec("a")], REQUEST, Deadline(10), AttemptLog())
    await opened.rest.aclose()  # the stream broke after its first delta
    await d.finished(opened, ok=False)
    assert backend.calls == ["r0"]
    assert await breakers.state("breaker:r0") == BreakerState.OPEN


async def test_a_spent_deadline_fails_the_request_not_the_target() -> None:
    breakers = Breakers(MemoryBreakerStore(), BreakerConfig(failures=1, open_s=30.0))
    backend = ScriptedBackend({"a": ["r0", "r1"]}, {"r0": OK, "r1": OK})
    with pytest.raises(DeadlineExceeded) as err:
        await dispatcher(backend, breakers=breakers).open(
            [spec("a")], REQUEST, Deadline(0.0005), AttemptLog()
        )
    assert err.value.reason == "DEADLINE_EXCEEDED"
    assert backend.calls == []
    assert await breakers.state("breaker:r0") == BreakerState.CLOSED
