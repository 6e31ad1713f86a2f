"""What crosses the Triton boundary, written and read in one place.

The Triton python model (``deploy/triton/model_repository/*/1/model.py``) turns request tensors
into a :class:`GenerationRequest` and engine deltas into response tensors with these functions,
and the Triton backend builds the tensors and reads the responses with their counterparts, so
neither side changes a value on its own: a tensor that is absent takes the engine's default, a
tensor that is present is passed as sent (``top_p=0`` stays 0 and is refused like everywhere else).

Responses carry, besides the token ids and finish code, the engine's own view of the request:
``step_info`` on every response (the engine's instance id, the decode step that produced the
response and its batch size: several Triton pods each count their own steps) and, on the
first one, ``first_token_info`` (queue wait and prefill in microseconds, prompt tokens reused from
the prefix cache) and ``execution_providers`` (what the engine's session runs on).

Errors cross as a message: Triton's python backend has no RESOURCE_EXHAUSTED code and no field for
a retry hint, so a domain error travels as ``llmesh-error {json}`` and comes back as the same typed
error with the same message, reason and retry hint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from libs.runtime.errors import LlmeshError, Unavailable, error_for_code
from services.inference.generation import Delta, FinishReason, GenerationRequest, SamplingConfig

ERROR_MARK = "llmesh-error "
FINISH_CODES = {None: 0, FinishReason.STOP: 1, FinishReason.LENGTH: 2, FinishReason.CANCELLED: 0}
FINISH_REASONS = {1: FinishReason.STOP, 2: FinishReason.LENGTH}

# Optional sampling inputs: tensor name -> (Triton dtype, numpy dtype, python type).
SAMPLING_INPUTS: dict[str, tuple[str, type[np.generic], type]] = {
    "temperature": ("FP32", np.float32, float),
    "top_p": ("FP32", np.float32, float),
    "top_k": ("INT32", np.int32, int),
    "max_tokens": ("INT32", np.int32, int),
    "seed": ("INT64", np.int64, int),
}
Tensors = Callable[[str], "np.ndarray | None"]


# ------------------------------------------------------------------------------- requests


def request_tensors(request: GenerationRequest) -> list[tuple[str, np.ndarray, str]]:
    """(name, value, Triton dtype) of every input a request sets; unset ones are left out."""
    out: list[tuple[str, np.ndarray, str]] = [
        ("prompt_token_ids", np.asarray(request.prompt_token_ids, np.int32), "INT32")
    ]
    s = request.sampling
    for name, (dtype, np_type, _) in SAMPLING_INPUTS.items():
        value = getattr(s, name)
        if value is not None:
            out.append((name, np.asarray([value], np_type), dtype))
    return out


def request_from_tensors(get: Tensors, request_id: str) -> GenerationRequest:
    """The engine's request from the input tensors, values exactly as sent."""
    prompt = get("prompt_token_ids")
    fields = {}
    for name, (_, _, py_type) in SAMPLING_INPUTS.items():
        tensor = get(name)
        if tensor is not None:
            fields[name] = py_type(tensor.reshape(-1)[0].item())
    ids = () if prompt is None else tuple(int(t) for t in prompt.reshape(-1))
    return GenerationRequest(ids, SamplingConfig(**fields), request_id)


# ------------------------------------------------------------------------------- responses


def response_tensors(
    delta: Delta, engine_id: int, providers: tuple[str, ...]
) -> list[tuple[str, np.ndarray]]:
    """(name, value) of the output tensors of one delta of the engine ``engine_id``."""
    out: list[tuple[str, np.ndarray]] = [
        ("token_ids", np.asarray(delta.token_ids, np.int32)),
        ("finish_reason", np.asarray([FINISH_CODES[delta.finish_reason]], np.int32)),
        ("step_info", np.asarray([engine_id, delta.step, delta.batch_size], np.int64)),
    ]
    if delta.first:
        timings = [round(delta.queue_ms * 1000), round(delta.ttft_ms * 1000), delta.cached_tokens]
        out.append(("first_token_info", np.asarray(timings, np.int64)))
        out.append(("execution_providers", np.asarray(list(providers) or [""], np.object_)))
    return out


@dataclass
class Response:
    """One Triton response read back: the delta (no text yet), the engine that produced it and,
    on the first, the providers it runs on."""

    delta: Delta
    engine_id: int = 0
    providers: tuple[str, ...] = ()


def read_response(get: Tensors) -> Response:
    """Read one response's tensors (the backend adds text and usage)."""
    ids = get("token_ids")
    code = get("finish_reason")
    delta = Delta([] if ids is None else [int(t) for t in ids.reshape(-1)], "")
    delta.finish_reason = FINISH_REASONS.get(0 if code is None else int(code.reshape(-1)[0]))
    step = get("step_info")
    engine_id = 0
    if step is not None:
        engine_id, delta.step, delta.batch_size = (int(v) for v in step.reshape(-1)[:3])
    first = get("first_token_info")
    providers: tuple[str, ...] = ()
    if first is not None:
        queue_us, prefill_us, reused = (int(v) for v in first.reshape(-1)[:3])
        delta.first, delta.queue_ms, delta.ttft_ms, delta.cached_tokens = (
            True, queue_us / 1000, prefill_us / 1000, reused
        )  # fmt: skip
        names = get("execution_providers")
        if names is not None:
            providers = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.reshape(-1) if n)
    return Response(delta, engine_id, providers)


# ------------------------------------------------------------------------------- errors


def encode_error(exc: BaseException) -> str:
    """An error as the message of a Triton error response."""
    error = exc if isinstance(exc, LlmeshError) else Unavailable(str(exc))
    body: dict[str, str | float] = {
        "code": error.code.name,
        "message": error.message,
        "reason": error.reason,
    }
    retry = error.retry_after_s()
    if retry is not None:
        body["retry_after_s"] = retry
    return ERROR_MARK + json.dumps(body)


def decode_error(message: str) -> LlmeshError | None:
    """The typed error inside a Triton error message, or None when it carries none."""
    at = message.find(ERROR_MARK)
    if at < 0:
        return None
    try:
        body, _ = json.JSONDecoder().raw_decode(message, at + len(ERROR_MARK))
        retry = body.get("retry_after_s")
        return error_for_code(
            grpc.StatusCode[str(body["code"])],
            str(body["message"]),
            reason=str(body.get("reason", "")),
            retry_after_s=None if retry is None else float(retry),
        )
    except (ValueError, KeyError, TypeError):
        return None
