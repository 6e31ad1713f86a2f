"""The pipeline's vocabulary: the validated request, its events and how it was routed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.keys import KeyRecord

FINISH_NAMES: dict[int, str] = {
    gen_pb.FINISH_REASON_STOP: "stop",
    gen_pb.FINISH_REASON_LENGTH: "length",
    gen_pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
    gen_pb.FINISH_REASON_CANCELLED: "cancelled",
}


class Limiter(Protocol):
    """Per-key rate limits (`services.router.limits.RateLimiter`)."""

    async def acquire(self, record: KeyRecord, tokens: int) -> Any: ...

    async def adjust(self, record: KeyRecord, reserved_tokens: int, actual_tokens: int) -> Any: ...

    async def refund(self, record: KeyRecord, tokens: int, requests: int = 1) -> Any: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Per-step limits and defaults (from the router settings)."""

    tokenizer_timeout_s: float = 1.0
    safety_timeout_s: float = 2.0
    cache_timeout_s: float = 0.3
    cache_wait_ms: int = 0
    # Ask the cache for semantic hits (and give it the prompt text to index); off = exact only.
    cache_semantic: bool = True
    default_max_tokens: int = 256
    stream_chunk_chars: int = 24
    # When safety is down and neither the key nor its tenant says otherwise: "closed" or "open".
    safety_fail_mode: str = "closed"


@dataclass(frozen=True)
class GenerationInput:
    """A validated chat (messages) or text completion (prompt) request."""

    model: str
    sampling: gen_pb.SamplingParams
    cache_mode: cache_pb.CacheMode.ValueType = cache_pb.CACHE_MODE_AUTO
    user: str = ""
    messages: Sequence[gen_pb.ChatMessage] = ()
    prompt: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.prompt is None

    def screen_messages(self) -> list[gen_pb.ChatMessage]:
        """What input safety screens: the chat, or the prompt as one user message."""
        if self.is_chat:
            return list(self.messages)
        return [gen_pb.ChatMessage(role="user", content=self.prompt or "")]

    def routing_text(self) -> str:
        """The text the complexity estimate reads: system and user turns, or the prompt."""
        if not self.is_chat:
            return self.prompt or ""
        return "\n".join(msg.content for msg in self.messages if msg.role in ("system", "user"))

    def _last_user(self) -> int:
        """Index of the last user message (-1 when there is none)."""
        return max((i for i, msg in enumerate(self.messages) if msg.role == "user"), default=-1)

    def semantic_text(self) -> str:
        """The last user message (or the prompt), embedded by the semantic cache."""
        if not self.is_chat:
            return self.prompt or ""
        last = self._last_user()
        return self.messages[last].content if last >= 0 else ""

    def context_digest(self) -> str:
        """Fingerprint of the prompt except `semantic_text`: for a chat every message (role, name,
        content) with the last user message's content left out, for a raw completion only that
        it is one. The semantic cache serves a hit only between equal digests, so a question
        never gets an answer given under another system prompt or conversation."""
        if not self.is_chat:
            parts: list[object] = ["completion"]
        else:
            last = self._last_user()
            parts = ["chat"]
            parts += ([m.role, m.name, None if i == last else m.content] for i, m in enumerate(self.messages))
        raw = json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode()
        return hashlib.sha256(raw).hexdigest()[:32]

    def char_count(self) -> int:
        return len(self.prompt or "") if not self.is_chat else sum(len(msg.content) for msg in self.messages)


@dataclass
class Route:
    """How a request was served (RouteInfo)."""

    model: str = ""
    reason: str = ""
    attempts: list[str] = field(default_factory=list)
    cache: str = "bypass"
    safety: str = ""
    trace_id: str = ""
    cost_usd: float = 0.0
    output_safety: str = ""
    output_blocked_reason: str = ""


@dataclass(frozen=True)
class Started:
    """Sent before any text: the model answering and why."""

    model: str
    reason: str
    cache: str


@dataclass(frozen=True)
class TextDelta:
    """Released text."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a generation."""

    finish_reason: gen_pb.FinishReason.ValueType
    usage: gen_pb.Usage
    route: Route


Event = Started | TextDelta | Finished
