"""OpenAI request bodies -> router request messages, with OpenAI's validation and messages.

Everything here is plain data in, protobuf messages out (no network): the handlers decode the
body with `decode_json`, then `parse_chat` / `parse_completion` turn it into the router request
or raise a 400 `ApiError` naming the offending parameter. Parameters OpenAI defines but llmesh
does not implement are refused when set to a non-default value instead of being ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb

from services.gateway.openai_errors import ApiError, invalid

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_STOP = 4
MAX_STOP_BYTES = 64
ROLES = {"system", "user", "assistant", "tool", "developer"}
CACHE_MODES = ("auto", "force", "bypass")

# OpenAI parameters llmesh does not implement, with the value that means "not used".
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logit_bias": {},
    "logprobs": False,
    "top_logprobs": 0,
    "tools": [],
    "functions": [],
    "tool_choice": "none",
    "function_call": "none",
    "best_of": 1,
    "echo": False,
    "suffix": "",
}


def decode_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for invalid UTF-8, malformed JSON or a non-object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(
            f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding"
        ) from None
    if not text.strip():
        raise invalid("request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise invalid(f"request body must be a JSON object, got {_kind(body)}", code="invalid_json")
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _string(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"'{name}' is required", name, "missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise invalid(f"'{name}' must be a string, got {_kind(value)}", name, "invalid_type")
    return value


def _number(body: dict[str, Any], name: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"'{name}' must be a number, got {_kind(value)}", name, "invalid_type")
    if value < lo or value > hi or (lo_open and value == lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise invalid(f"'{name}' must be in {interval}, got {value}", name, "invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer, got {_kind(value)}", name, "invalid_type")
    if not lo <= value <= hi:
        raise invalid(f"'{name}' must be between {lo} and {hi}, got {value}", name, "invalid_value")
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"'{name}' must be a boolean, got {_kind(value)}", name, "invalid_type")
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(items) > MAX_STOP:
        raise invalid(
            f"'stop' may hold at most {MAX_STOP} sequences, got {len(items)}", "stop", "invalid_value"
        )
    for s in items:
        if not s or len(s.encode()) > MAX_STOP_BYTES:
            raise invalid(
                f"each 'stop' sequence must be 1 to {MAX_STOP_BYTES} bytes", "stop", "invalid_value"
            )
    return list(items)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, default in _UNSUPPORTED_DEFAULTS.items():
        value = body.get(name)
        if (
            value is None
            or value == default
            or (name == "tool_choice" and value == "auto" and not body.get("tools"))
        ):
            continue
        raise invalid(f"'{name}' is not supported by this server", name, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise invalid(
            'only response_format {"type": "text"} is supported', "response_format", "unsupported_parameter"
        )


def _options(body: dict[str, Any]) -> pb.GenerationOptions:
    _refuse_unsupported(body)
    model = _string(body, "model", required=True)
    if not model:
        raise invalid("'model' must not be empty", "model", "invalid_value")
    n = _integer(body, "n", 1, 128)
    if n not in (None, 1):
        raise invalid(f"only n=1 is supported, got n={n}", "n", "unsupported_value")
    cache = _string(body, "cache") or "auto"
    if cache not in CACHE_MODES:
        raise invalid(
            f"'cache' must be one of {', '.join(CACHE_MODES)}, got {cache!r}", "cache", "invalid_value"
        )
    sampling = gen_pb.SamplingParams(stop=_stop(body))
    if (t := _number(body, "temperature", 0, 2)) is not None:
        sampling.temperature = t
    if (p := _number(body, "top_p", 0, 1, lo_open=True)) is not None:
        sampling.top_p = p
    # max_completion_tokens replaced max_tokens in OpenAI's API; it wins when both are sent.
    max_tokens = _integer(body, "max_completion_tokens", 1, INT32_MAX)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, INT32_MAX)
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if (seed := _integer(body, "seed", -INT64_MAX - 1, INT64_MAX)) is not None:
        sampling.seed = seed
    return pb.GenerationOptions(
        model=model, sampling=sampling, n=1, user=_string(body, "user") or "", cache=cache
    )


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise invalid(
                    f'{where}.content[{i}]: only text parts ({{"type": "text", "text": ...}}) are supported',
                    f"{where}.content",
                    "unsupported_content",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise invalid(
        f"{where}.content must be a string or an array of text parts", f"{where}.content", "invalid_type"
    )


def _messages(body: dict[str, Any]) -> list[gen_pb.ChatMessage]:
    value = body.get("messages")
    if value is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(value, list):
        raise invalid(f"'messages' must be an array, got {_kind(value)}", "messages", "invalid_type")
    if not value:
        raise invalid("'messages' must hold at least one message", "messages", "invalid_value")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{where} must be an object, got {_kind(m)}", where, "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                f"{where}.role",
                "invalid_value",
            )
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(f"{where}.name must be a string", f"{where}.name", "invalid_type")
        out.append(
            gen_pb.ChatMessage(
                role="system" if role == "developer" else role,
                content=_content(m.get("content"), where),
                name=name or "",
            )
        )
    return out


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _boolean(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise invalid("'stream_options' must be an object", "stream_options", "invalid_type")
    if not stream:
        raise invalid(
            "'stream_options' is only allowed when 'stream' is true", "stream_options", "invalid_value"
        )
    include = _boolean(opts, "include_usage")
    return stream, include


@dataclass(frozen=True)
class ChatCall:
    """A parsed /v1/chat/completions body."""

    request: pb.CreateChatCompletionRequest
    stream: bool
    include_usage: bool

    def stream_request(self) -> pb.StreamChatCompletionRequest:
        """The same request for the streaming RPC."""
        return pb.StreamChatCompletionRequest(messages=self.request.messages, options=self.request.options)


@dataclass(frozen=True)
class CompletionCall:
    """A parsed /v1/completions body."""

    request: pb.CreateCompletionRequest
    stream: bool
    include_usage: bool

    def stream_request(self) -> pb.StreamCompletionRequest:
        """The same request for the streaming RPC."""
        return pb.StreamCompletionRequest(prompt=self.request.prompt, options=self.request.options)


def parse_chat(body: dict[str, Any]) -> ChatCall:
    """Validate a chat completion body; raises a 400 ApiError."""
    messages = _messages(body)
    options = _options(body)
    stream, include_usage = _stream_flags(body)
    return ChatCall(pb.CreateChatCompletionRequest(messages=messages, options=options), stream, include_usage)


def parse_completion(body: dict[str, Any]) -> CompletionCall:
    """Validate a text completion body; raises a 400 ApiError."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise invalid(
            "'prompt' must be a string (or an array of one string); token arrays and batches are "
            "not supported",
            "prompt",
            "invalid_type",
        )
    options = _options(body)
    stream, include_usage = _stream_flags(body)
    return CompletionCall(pb.CreateCompletionRequest(prompt=prompt, options=options), stream, include_usage)


def usage_window(value: str | None) -> str:
    """The `window` query parameter of /v1/usage."""
    window = value or "day"
    if window not in ("day", "month"):
        raise ApiError(
            400, f"'window' must be 'day' or 'month', got {window!r}", param="window", code="invalid_value"
        )
    return window
