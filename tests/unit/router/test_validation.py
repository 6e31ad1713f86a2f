"""Request validation: every rejection says what to change."""

from __future__ import annotations

import pytest
from llmesh.cache.v1 import cache_service_pb2 as cache_pb
from llmesh.common.v1 import generation_pb2 as gen_pb

from libs.runtime.errors import InvalidArgument
from services.router.validation import check_messages, check_options, check_prompt


def msg(role: str = "user", content: str = "hi") -> gen_pb.ChatMessage:
    return gen_pb.ChatMessage(role=role, content=content)


@pytest.mark.parametrize(
    ("n", "sampling", "cache", "reason"),
    [
        (2, {}, "", "N_UNSUPPORTED"),
        (1, {"temperature": 2.5}, "", "INVALID_TEMPERATURE"),
        (1, {"temperature": -0.1}, "", "INVALID_TEMPERATURE"),
        (1, {"top_p": 0.0}, "", "INVALID_TOP_P"),
        (1, {"max_tokens": 0}, "", "INVALID_MAX_TOKENS"),
        (1, {"max_tokens": -5}, "", "INVALID_MAX_TOKENS"),
        (1, {"stop": ["a", "b", "c", "d", "e"]}, "", "TOO_MANY_STOP"),
        (1, {"stop": [""]}, "", "INVALID_STOP"),
        (1, {"stop": ["x" * 65]}, "", "INVALID_STOP"),
        (1, {}, "sometimes", "INVALID_CACHE_MODE"),
    ],
)
def test_bad_options_are_rejected_with_a_reason(n: int, sampling: dict, cache: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_options(n, gen_pb.SamplingParams(**sampling), cache)
    assert err.value.reason == reason
    assert err.value.message


def test_good_options_pass_and_map_the_cache_mode() -> None:
    s = gen_pb.SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16, stop=["a", "b", "c", "d"])
    assert check_options(1, s, "") == cache_pb.CACHE_MODE_AUTO
    assert check_options(0, s, "Bypass") == cache_pb.CACHE_MODE_BYPASS
    assert check_options(1, s, "force") == cache_pb.CACHE_MODE_FORCE


def test_messages_must_exist_have_known_roles_and_some_content() -> None:
    with pytest.raises(InvalidArgument, match="must not be empty"):
        check_messages([])
    with pytest.raises(InvalidArgument, match=r"messages\[1\].role is 'robot'"):
        check_messages([msg(), msg("robot")])
    with pytest.raises(InvalidArgument, match="every message is empty"):
        check_messages([msg(content="  ")])
    check_messages([msg("system", "be brief"), msg()])
    with pytest.raises(InvalidArgument, match="prompt must not be empty"):
        check_prompt(" ")
