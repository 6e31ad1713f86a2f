"""OpenAI body parsing and error mapping of the gateway (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb

from services.gateway import protocol, responses
from services.gateway.openai_errors import ApiError, from_status


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_unset_sampling_fields_stay_unset() -> None:
    sampling = protocol.parse_chat(body()).request.options.sampling
    for field in ("temperature", "top_p", "max_tokens", "seed"):
        assert not sampling.HasField(field)
    assert list(sampling.stop) == []


def test_integral_floats_are_integers_and_null_means_unset() -> None:
    call = protocol.parse_chat(body(max_tokens=16.0, seed=None, temperature=None, stop=None))
    assert call.request.options.sampling.max_tokens == 16
    assert not call.request.options.sampling.HasField("temperature")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"stop": ["", "x"]}, "stop"),
        ({"stop": ["x" * 65]}, "stop"),
        ({"user": 7}, "user"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"model": ""}, "model"),
    ],
)
def test_invalid_values_name_their_param(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        protocol.parse_chat(body(**extra))
    assert info.value.status == 400 and info.value.param == param


def test_default_valued_unsupported_params_are_accepted() -> None:
    call = protocol.parse_chat(
        body(presence_penalty=0, logprobs=False, tools=[], response_format={"type": "text"})
    )
    assert call.request.options.model == "m"


def test_completion_prompt_forms() -> None:
    assert protocol.parse_completion({"model": "m", "prompt": ["one"]}).request.prompt == "one"
    for bad in ([1, 2, 3], ["a", "b"], None):
        with pytest.raises(ApiError) as info:
            protocol.parse_completion({"model": "m", "prompt": bad})
        assert info.value.param == "prompt"


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("INVALID_ARGUMENT", 400, "invalid_request_error"),
        ("UNAUTHENTICATED", 401, "authentication_error"),
        ("PERMISSION_DENIED", 403, "permission_error"),
        ("NOT_FOUND", 404, "not_found_error"),
        ("RESOURCE_EXHAUSTED", 429, "rate_limit_error"),
        ("UNAVAILABLE", 503, "service_unavailable_error"),
        ("DEADLINE_EXCEEDED", 504, "timeout_error"),
        ("INTERNAL", 500, "api_error"),
        ("DATA_LOSS", 500, "api_error"),
    ],
)
def test_status_mapping(code: str, status: int, kind: str) -> None:
    err = from_status(code, "boom", reason="SOME_REASON", retry_after_s=2.2)
    assert (err.status, err.type, err.code) == (status, kind, "some_reason")
    assert ("Retry-After" in err.headers) == (status == 429)
    if status == 429:
        assert err.headers["Retry-After"] == "3"  # rounded up, never 0
    assert err.body()["error"]["message"] == "boom"


def test_usage_chunk_comes_last_and_only_when_asked() -> None:
    chunk = pb.StreamChatCompletionResponse(
        id="c",
        model="m",
        choices=[pb.ChoiceDelta(content="x", finish_reason="length")],
        usage=gen_pb.Usage(prompt_tokens=2, completion_tokens=3),
    )
    plain = responses.chat_chunks(chunk, include_usage=False)
    assert len(plain) == 1 and "usage" not in plain[0]
    assert plain[0]["choices"][0] == {
        "index": 0,
        "delta": {"content": "x"},
        "logprobs": None,
        "finish_reason": "length",
    }
    with_usage = responses.chat_chunks(chunk, include_usage=True)
    assert with_usage[0]["usage"] is None
    assert with_usage[1]["choices"] == [] and with_usage[1]["usage"]["total_tokens"] == 5
