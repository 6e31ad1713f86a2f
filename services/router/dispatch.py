"""Getting a first token: replicas by load, circuit breakers, retries under a budget, fallbacks.

For each model of the fallback chain (the requested model first), the backend lists its targets
best first. A target whose breaker is open is skipped. An attempt succeeds when its first delta
arrives within the first-token deadline; until then nothing has reached the caller, so a failed
attempt can be retried on another target of the same model (each such retry takes a token from
the retry budget) and, when the model's targets are exhausted, the next model of the chain is
tried (a fallback; bounded by `max_attempts`). Every hop is recorded as `target:model:outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field

from libs.runtime.errors import DeadlineExceeded, LlmeshError, ResourceExhausted, Unavailable
from services.router.backends import (
    Backend,
    BackendRequest,
    GenDelta,
    Target,
    counts_against_target,
    retryable,
)
from services.router.breaker import Admission, Breakers, BreakerState
from services.router.deadline import Deadline
from services.router.metrics import ATTEMPTS, RETRY_REFUSED
from services.router.registry import ModelSpec
from services.router.retry_budget import RetryBudget

log = logging.getLogger(__name__)


@dataclass
class Opened:
    """A generation whose first delta has arrived."""

    spec: ModelSpec
    target: Target
    first: GenDelta
    rest: AsyncGenerator[GenDelta, None]
    admission: Admission
    first_token_s: float


@dataclass
class AttemptLog:
    """The hops of one request, for RouteInfo.attempts."""

    hops: list[str] = field(default_factory=list)
    fallback_used: bool = False

    def add(self, target: Target, spec: ModelSpec, outcome: str) -> None:
        self.hops.append(f"{target.name}:{spec.name}:{outcome}")


def _outcome(exc: LlmeshError) -> str:
    return exc.reason.lower() if exc.reason else type(exc).__name__.lower()


class Dispatcher:
    """Opens a generation on the best available target, by the policy in the module docstring."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        breakers: Breakers,
        retry_budget: RetryBudget,
        *,
        first_token_timeout_s: float,
        max_attempts: int,
    ):
        self.backends = backends
        self.breakers = breakers
        self.retry_budget = retry_budget
        self.first_token_timeout_s = first_token_timeout_s
        self.max_attempts = max_attempts

    async def _try(
        self,
        spec: ModelSpec,
        target: Target,
        admission: Admission,
        request: BackendRequest,
        deadline: Deadline,
    ) -> Opened:
        backend = self.backends[spec.backend]
        timeout = min(self.first_token_timeout_s, max(deadline.remaining(), 0.001))
        started = time.perf_counter()
        stream = backend.stream(spec, target, request, max(deadline.remaining(), 0.001))
        try:
            first = await asyncio.wait_for(anext(stream), timeout)
        except StopAsyncIteration:
            raise Unavailable(
                f"{target.name} ended the stream without output", reason="EMPTY_STREAM"
            ) from None
        except TimeoutError:
            await stream.aclose()
            raise DeadlineExceeded(
                f"{target.name} gave no first token within {timeout:.2f}s", reason="FIRST_TOKEN_TIMEOUT"
            ) from None
        except BaseException:
            await stream.aclose()
            raise
        return Opened(spec, target, first, stream, admission, time.perf_counter() - started)

    async def open(
        self, chain: Sequence[ModelSpec], request: BackendRequest, deadline: Deadline, attempts: AttemptLog
    ) -> Opened:
        """The first delta of a generation, or the error that explains why no target could give one."""
        self.retry_budget.on_request()
        made = 0
        errors: list[LlmeshError] = []
        retry_in: list[float] = []
        for hop, spec in enumerate(chain):
            tried_model = False
            for target in self.backends[spec.backend].targets(spec, request.prompt_token_ids):
                if made >= self.max_attempts:
                    break
                admission = await self.breakers.admit(target.breaker_key)
                if not admission.allowed:
                    attempts.add(target, spec, "breaker_open")
                    retry_in.append(admission.retry_in_s)
                    continue
                try:
                    # The caller's own deadline running out says nothing about the target.
                    deadline.step(self.first_token_timeout_s, f"the first token from {target.name}")
                except DeadlineExceeded:
                    await self.breakers.release(target.breaker_key, admission)
                    raise
                if tried_model:
                    if not self.retry_budget.try_retry():
                        RETRY_REFUSED.inc()
                        attempts.add(target, spec, "retry_budget_exhausted")
                        await self.breakers.release(target.breaker_key, admission)
                        break
                    kind = "retry"
                else:
                    kind = "first" if made == 0 else "fallback"
                made += 1
                tried_model = True
                try:
                    opened = await self._try(spec, target, admission, request, deadline)
                except LlmeshError as exc:
                    ATTEMPTS.labels(kind, "error").inc()
                    if counts_against_target(exc):
                        await self.breakers.record(target.breaker_key, False, admission)
                    else:
                        await self.breakers.release(target.breaker_key, admission)
                    attempts.add(target, spec, _outcome(exc))
                    log.warning(
                        "inference attempt failed",
                        extra={"fields": {"target": target.name, "model": spec.name, "error": exc.message}},
                    )
                    if not retryable(exc) or deadline.expired():
                        raise
                    errors.append(exc)
                    continue
                except BaseException:
                    await self.breakers.release(target.breaker_key, admission)
                    raise
                ATTEMPTS.labels(kind, "ok").inc()
                await self.breakers.record(target.breaker_key, True, admission)
                attempts.add(target, spec, "ok")
                attempts.fallback_used = hop > 0
                return opened
        names = " -> ".join(s.name for s in chain)
        hops = ", ".join(attempts.hops) or "no target"
        if errors and all(isinstance(e, ResourceExhausted) for e in errors):
            raise ResourceExhausted(
                f"every backend for {names} is busy ({hops}); retry shortly",
                retry_after_s=1.0,
                reason="BACKENDS_BUSY",
            )
        if not errors and retry_in:
            raise Unavailable(
                f"circuit breakers are open for every backend of {names}; retry in {min(retry_in):.1f}s",
                reason="CIRCUIT_OPEN",
            )
        last = errors[-1].message if errors else "no target available"
        raise Unavailable(
            f"no backend could serve {names} (attempts: {hops}); last error: {last}",
            reason="ALL_BACKENDS_FAILED",
        )

    async def finished(self, opened: Opened, ok: bool) -> None:
        """Record a failure that happened after the first token (a success was already recorded)."""
        if not ok:
            with contextlib.suppress(LlmeshError):
                await self.breakers.record(
                    opened.target.breaker_key, False, Admission(True, False, BreakerState.CLOSED)
                )
