"""Checks on the public request, with messages a person can act on."""

from __future__ import annotations

from collections.abc import Sequence

from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.runtime.errors import InvalidArgument

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP = 4
MAX_STOP_BYTES = 64
MAX_MESSAGES = 512
CACHE_MODES: dict[str, cache_pb.CacheMode.ValueType] = {
    "": cache_pb.CACHE_MODE_AUTO,
    "auto": cache_pb.CACHE_MODE_AUTO,
    "force": cache_pb.CACHE_MODE_FORCE,
    "bypass": cache_pb.CACHE_MODE_BYPASS,
}


def _bad(message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason)


def check_messages(messages: Sequence[gen_pb.ChatMessage]) -> None:
    """Non-empty conversation, known roles, something to answer."""
    if not messages:
        raise _bad("messages must not be empty: send at least one {role, content} message", "EMPTY_MESSAGES")
    if len(messages) > MAX_MESSAGES:
        raise _bad(f"{len(messages)} messages; the limit is {MAX_MESSAGES}", "TOO_MANY_MESSAGES")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise _bad(f"messages[{i}].role is {m.role!r}; use one of {', '.join(ROLES)}", "INVALID_ROLE")
    if not any(m.content.strip() for m in messages):
        raise _bad("every message is empty: give at least one message some content", "EMPTY_MESSAGES")


def check_prompt(prompt: str) -> None:
    """A completion needs a prompt."""
    if not prompt.strip():
        raise _bad("prompt must not be empty", "EMPTY_PROMPT")


def check_options(n: int, sampling: gen_pb.SamplingParams, cache: str) -> cache_pb.CacheMode.ValueType:
    """Validate n, sampling and the cache mode; returns the cache mode enum value."""
    if n not in (0, 1):
        raise _bad(f"n is {n}; only n=1 (one choice per request) is supported", "N_UNSUPPORTED")
    if sampling.HasField("temperature") and not 0.0 <= sampling.temperature <= 2.0:
        raise _bad(f"temperature is {sampling.temperature:g}; use a value in [0, 2]", "INVALID_TEMPERATURE")
    if sampling.HasField("top_p") and not 0.0 < sampling.top_p <= 1.0:
        raise _bad(f"top_p is {sampling.top_p:g}; use a value in (0, 1]", "INVALID_TOP_P")
    if sampling.HasField("top_k") and sampling.top_k < 0:
        raise _bad(f"top_k is {sampling.top_k}; use 0 (off) or a positive number", "INVALID_TOP_K")
    if sampling.HasField("max_tokens") and sampling.max_tokens <= 0:
        raise _bad(f"max_tokens is {sampling.max_tokens}; it must be greater than 0", "INVALID_MAX_TOKENS")
    if len(sampling.stop) > MAX_STOP:
        raise _bad(f"{len(sampling.stop)} stop sequences; at most {MAX_STOP} are allowed", "TOO_MANY_STOP")
    for i, s in enumerate(sampling.stop):
        if not s:
            raise _bad(f"stop[{i}] is empty; remove it", "INVALID_STOP")
        if len(s.encode()) > MAX_STOP_BYTES:
            raise _bad(f"stop[{i}] is longer than {MAX_STOP_BYTES} bytes", "INVALID_STOP")
    mode = CACHE_MODES.get(cache.strip().lower())
    if mode is None:
        raise _bad(f"cache is {cache!r}; use 'auto', 'force' or 'bypass'", "INVALID_CACHE_MODE")
    return mode
