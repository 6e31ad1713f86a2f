"""OpenAI-compatible HTTP endpoints (vLLM, hosted APIs) as a router backend.

Streams `POST {base_url}/chat/completions` (or `/completions` for raw prompts) with
`stream: true` and reads the Server-Sent Events. The API key comes from the environment variable
the registry names (`api_key_env`) when the call is made, so rotating it needs no restart. HTTP
failures map to the same typed errors as gRPC ones: 429 → RESOURCE_EXHAUSTED, 5xx / connection
errors → UNAVAILABLE, timeouts → DEADLINE_EXCEEDED, 404 → NOT_FOUND, 400 → INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LlmeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.router.backends import BackendRequest, GenDelta, Target
from services.router.registry import ModelSpec

FINISH: dict[str, gen_pb.FinishReason.ValueType] = {
    "stop": gen_pb.FINISH_REASON_STOP,
    "length": gen_pb.FINISH_REASON_LENGTH,
    "content_filter": gen_pb.FINISH_REASON_CONTENT_FILTER,
}


def request_body(spec: ModelSpec, req: BackendRequest) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of a streamed chat (or text) completion."""
    s = req.sampling
    body: dict[str, Any] = {
        "model": spec.upstream_model,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if req.messages:
        path = "/chat/completions"
        body["messages"] = [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
            for m in req.messages
        ]
    else:
        path = "/completions"
        body["prompt"] = req.prompt
    if s.HasField("temperature"):
        body["temperature"] = s.temperature
    if s.HasField("top_p"):
        body["top_p"] = s.top_p
    if s.HasField("top_k") and s.top_k > 0:
        body["top_k"] = s.top_k
    if s.HasField("max_tokens"):
        body["max_tokens"] = s.max_tokens
    if s.HasField("seed"):
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if req.request_id:
        body["user"] = req.request_id
    return path, body


def http_error(status: int, text: str, upstream: str) -> LlmeshError:
    """A typed error for an upstream HTTP status."""
    msg = f"{upstream} answered HTTP {status}: {text[:300]}"
    if status == 429:
        return ResourceExhausted(msg, retry_after_s=1.0, reason="UPSTREAM_RATE_LIMITED")
    if status == 404:
        return NotFound(msg, reason="UPSTREAM_NOT_FOUND")
    if status in (401, 403):
        return FailedPrecondition(
            msg + " (check the key in the registry's api_key_env)", reason="UPSTREAM_AUTH"
        )
    if 400 <= status < 500:
        return InvalidArgument(msg, reason="UPSTREAM_REJECTED")
    return Unavailable(msg, reason="UPSTREAM_ERROR")


def parse_event(data: str) -> GenDelta | None:
    """One SSE `data:` payload as a delta (None for `[DONE]` and keep-alives without content)."""
    if data.strip() == "[DONE]":
        return None
    event = json.loads(data)
    delta = GenDelta(text="")
    for choice in event.get("choices") or []:
        if "delta" in choice:
            delta.text += choice["delta"].get("content") or ""
        else:
            delta.text += choice.get("text") or ""
        reason = choice.get("finish_reason")
        if reason:
            delta.finish_reason = FINISH.get(reason, gen_pb.FINISH_REASON_STOP)
    usage = event.get("usage")
    if usage:
        delta.usage = gen_pb.Usage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            total_tokens=int(usage.get("total_tokens", 0)),
        )
    delta.tokens = 1 if delta.text else 0
    delta.model_version = str(event.get("model", ""))
    return delta


class OpenAIBackend:
    """Backend `openai`: one target per endpoint (its base_url)."""

    def __init__(self, client: httpx.AsyncClient | None = None):
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))

    async def stop(self) -> None:
        """Close the HTTP connection pool."""
        await self.client.aclose()

    def targets(self, spec: ModelSpec, prompt_token_ids: Sequence[int] = ()) -> list[Target]:
        host = urlsplit(spec.base_url).netloc or spec.base_url
        return [
            Target(name=f"openai:{host}", breaker_key=f"openai:{spec.base_url}", info={"url": spec.base_url})
        ]

    def model_version(self, spec: ModelSpec) -> str:
        return spec.upstream_model

    async def stream(
        self, spec: ModelSpec, target: Target, request: BackendRequest, timeout_s: float
    ) -> AsyncGenerator[GenDelta, None]:
        path, body = request_body(spec, request)
        headers = {"accept": "text/event-stream"}
        key = spec.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = spec.base_url.rstrip("/") + path
        upstream = f"upstream {target.name}"
        finish: GenDelta | None = None
        usage: gen_pb.Usage | None = None
        try:
            async with self.client.stream(
                "POST",
                url,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=min(2.0, timeout_s)),
            ) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    raise http_error(resp.status_code, text, upstream)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    delta = parse_event(line[5:].strip())
                    if delta is None:
                        break
                    usage = delta.usage or usage
                    if delta.finish_reason:
                        finish = delta
                        continue
                    if delta.text:
                        yield delta
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(f"{upstream} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"{upstream} unreachable: {exc!r}") from None
        except json.JSONDecodeError as exc:
            raise Unavailable(f"{upstream} sent an event that is not JSON: {exc}") from None
        last = finish or GenDelta(text="", finish_reason=gen_pb.FINISH_REASON_STOP)
        last.usage = usage
        yield last
