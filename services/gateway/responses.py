"""Router responses -> OpenAI JSON objects and Server-Sent Events (no network).

The shapes follow OpenAI's API: `chat.completion`, `chat.completion.chunk`, `text_completion`,
`list` of `model`. How llmesh served the request (model chosen, cache, cost) rides along in an
extra `llmesh` object, which OpenAI clients ignore.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb

DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying `obj` as JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage(u: gen_pb.Usage) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens or u.prompt_tokens + u.completion_tokens,
    }


def route(r: pb.RouteInfo) -> dict[str, Any]:
    """The llmesh extension object."""
    return {
        "model": r.model,
        "reason": r.reason,
        "attempts": list(r.attempts),
        "cache": r.cache,
        "safety": r.safety,
        "trace_id": r.trace_id,
        "cost_usd": r.cost_usd,
        "output_safety": r.output_safety,
        "output_blocked_reason": r.output_blocked_reason,
    }


def chat_completion(resp: pb.CreateChatCompletionResponse) -> dict[str, Any]:
    """A `chat.completion` object."""
    return {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [
            {
                "index": c.index,
                "message": {
                    "role": c.message.role or "assistant",
                    "content": c.message.content,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": c.finish_reason or "stop",
            }
            for c in resp.choices
        ],
        "usage": usage(resp.usage),
        "system_fingerprint": None,
        "llmesh": route(resp.route),
    }


def _stream_events(
    chunk: pb.StreamChatCompletionResponse | pb.StreamCompletionResponse,
    kind: str,
    choices: list[dict[str, Any]],
    include_usage: bool,
) -> list[dict[str, Any]]:
    """Frame one router chunk as OpenAI stream objects (a usage chunk comes last when asked)."""
    head = {"id": chunk.id, "object": kind, "created": chunk.created, "model": chunk.model}
    out: list[dict[str, Any]] = []
    if choices:
        out.append({**head, "system_fingerprint": None, "choices": choices})
        if include_usage:
            out[-1]["usage"] = None
    if include_usage and chunk.HasField("usage"):
        out.append({**head, "system_fingerprint": None, "choices": [], "usage": usage(chunk.usage)})
    if chunk.HasField("route") and out:
        out[-1]["llmesh"] = route(chunk.route)
    return out


def chat_chunks(chunk: pb.StreamChatCompletionResponse, include_usage: bool) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` objects for one router chunk."""
    choices = []
    for c in chunk.choices:
        delta: dict[str, str] = {}
        if c.role:
            delta["role"] = c.role
        if c.content:
            delta["content"] = c.content
        choices.append(
            {"index": c.index, "delta": delta, "logprobs": None, "finish_reason": c.finish_reason or None}
        )
    return _stream_events(chunk, "chat.completion.chunk", choices, include_usage)


def text_completion(resp: pb.CreateCompletionResponse) -> dict[str, Any]:
    """A `text_completion` object."""
    return {
        "id": resp.id,
        "object": "text_completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [
            {"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish_reason or "stop"}
            for c in resp.choices
        ],
        "usage": usage(resp.usage),
        "system_fingerprint": None,
        "llmesh": route(resp.route),
    }


def text_chunks(chunk: pb.StreamCompletionResponse, include_usage: bool) -> list[dict[str, Any]]:
    """The streamed `text_completion` objects for one router chunk."""
    choices = [
        {"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish_reason or None}
        for c in chunk.choices
    ]
    return _stream_events(chunk, "text_completion", choices, include_usage)


def model(m: pb.Model) -> dict[str, Any]:
    """An OpenAI `model` object."""
    return {
        "id": m.id,
        "object": "model",
        "created": 0,
        "owned_by": m.owned_by or "llmesh",
        "llmesh": {
            "aliases": list(m.aliases),
            "tier": m.tier,
            "context_length": m.context_length,
            "input_price_per_1k": m.input_price_per_1k,
            "output_price_per_1k": m.output_price_per_1k,
        },
    }


def model_list(resp: pb.ListModelsResponse) -> dict[str, Any]:
    """OpenAI's model list."""
    return {"object": "list", "data": [model(m) for m in resp.models]}


def usage_report(resp: pb.GetUsageResponse) -> dict[str, Any]:
    """The usage response with proto field names."""
    return MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
