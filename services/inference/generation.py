"""Request, sampling and result types of the engine (plain data, no transport)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from libs.runtime.errors import InvalidArgument

MAX_STOP_SEQUENCES = 4
MAX_STOP_BYTES = 64


class FinishReason(enum.Enum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are picked for one request; the defaults decode greedily."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        """Raise InvalidArgument naming the first field out of range."""
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidArgument(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be >= 1, got {self.max_tokens}")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidArgument(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(self.stop)}")
        for s in self.stop:
            if not s or len(s.encode()) > MAX_STOP_BYTES:
                raise InvalidArgument(f"each stop sequence must be 1..{MAX_STOP_BYTES} bytes, got {s!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate from prompt token ids."""

    prompt_token_ids: tuple[int, ...]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    request_id: str = ""


def max_new_tokens(
    request: GenerationRequest, context_length: int, vocab_size: int, default_max_tokens: int
) -> int:
    """Check a request against a model's window and vocabulary; return its max new tokens.

    Every backend calls this, so a request is refused with the same message wherever it runs."""
    request.sampling.validate()
    prompt = request.prompt_token_ids
    if not prompt:
        raise InvalidArgument("prompt_token_ids is empty")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise InvalidArgument(f"token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    room = context_length - len(prompt)
    wanted = request.sampling.max_tokens
    if wanted is None:
        if room < 1:
            raise InvalidArgument(
                f"prompt of {len(prompt)} tokens leaves no room in the context window of "
                f"{context_length} tokens"
            )
        return min(default_max_tokens, room)
    if wanted > room:
        raise InvalidArgument(
            f"prompt ({len(prompt)} tokens) + max_tokens ({wanted}) exceeds the context window of "
            f"{context_length} tokens"
        )
    return wanted


@dataclass(frozen=True)
class Usage:
    """Token counts of a finished request."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """Tokens and text produced since the previous delta; the last one carries the finish."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    batch_size: int = 0  # sequences in the engine step that produced it (1 for a prefill)
    step: int = 0  # the engine's decode step that produced it (0 for a prefill)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache (first delta only)
    first: bool = False  # the request's first delta: it carries queue_ms, ttft_ms, cached_tokens
    error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None
