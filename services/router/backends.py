"""What the pipeline needs from a model backend, independent of how it is reached.

A backend names its targets for a model (replicas or endpoints, best first) and streams a
generation from one target. `BackendFailure` carries whether the failure says something about
the target's health (it then counts against the target's circuit breaker) and whether another
target could succeed (retry / fallback) or the request itself is at fault.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    LlmeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.router.registry import ModelSpec


@dataclass(frozen=True)
class BackendRequest:
    """One generation as every backend needs it."""

    prompt_token_ids: Sequence[int]
    sampling: gen_pb.SamplingParams
    request_id: str
    messages: Sequence[gen_pb.ChatMessage] = ()
    prompt: str = ""


@dataclass
class GenDelta:
    """Text produced since the previous delta; the last one carries finish reason and usage."""

    text: str
    tokens: int = 0
    finish_reason: gen_pb.FinishReason.ValueType = gen_pb.FINISH_REASON_UNSPECIFIED
    usage: gen_pb.Usage | None = None
    model_version: str = ""


@dataclass
class Target:
    """A place a model can run: a replica address or an HTTP endpoint."""

    name: str
    """Short name for RouteInfo.attempts (e.g. `inference-0`)."""
    breaker_key: str
    """Key of this target's circuit breaker (shared across router replicas)."""
    info: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """A kind of backend (llmesh replicas, OpenAI-compatible HTTP)."""

    def targets(self, spec: ModelSpec, prompt_token_ids: Sequence[int] = ()) -> list[Target]:
        """Where `spec` can run now, best first."""
        ...

    def stream(
        self, spec: ModelSpec, target: Target, request: BackendRequest, timeout_s: float
    ) -> AsyncGenerator[GenDelta, None]:
        """Stream one generation from `target`; closing the iterator cancels the call."""
        ...

    def model_version(self, spec: ModelSpec) -> str:
        """The version of `spec` the backend serves now ('' when unknown)."""
        ...


# Failures that mean "this target could not do it now": try another target, count for the breaker.
TARGET_FAILURES: tuple[type[LlmeshError], ...] = (Unavailable, DeadlineExceeded)
# Failures that another target may not have, but that say nothing about the target's health.
RETRYABLE_ELSEWHERE: tuple[type[LlmeshError], ...] = (ResourceExhausted, NotFound, FailedPrecondition)


def counts_against_target(exc: LlmeshError) -> bool:
    """Whether a failure should count against the target's circuit breaker."""
    return isinstance(exc, TARGET_FAILURES)


def retryable(exc: LlmeshError) -> bool:
    """Whether another target (or a fallback model) could answer where this one failed."""
    return isinstance(exc, TARGET_FAILURES + RETRYABLE_ELSEWHERE)
