"""OpenAI sampling parameters on the real model, through Envoy and the gateway, with the official
`openai` client: `stop` cuts the generated text, `max_completion_tokens` caps it, `top_p` is used."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from libs.launch.mesh import Mesh

pytestmark = pytest.mark.e2e
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name the four seasons of the year, in order, separated by commas."}
]


@pytest.fixture(scope="module")
def client(mesh: Mesh, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.url}/v1", api_key=api_key, max_retries=0, timeout=120)


def _chat(client: openai.OpenAI, **params: Any) -> Any:
    return client.chat.completions.create(
        model="smollm2",
        messages=PROMPT,
        extra_body={"cache": "bypass"},
        **{"temperature": 0, **params},
    )


@pytest.fixture(scope="module")
def baseline(client: openai.OpenAI) -> str:
    """The greedy answer with no stop sequence: the tests cut it at a word it really contains."""
    text: str = _chat(client, max_tokens=32).choices[0].message.content or ""
    assert len(text.split()) >= 4, text
    return text


def _cut_word(text: str) -> str:
    """A word from the middle of `text` (its first occurrence is where a stop must cut)."""
    words = [w.strip(".,;:!?") for w in text.split()]
    return next(w for w in words[2:] if len(w) >= 4)


def test_stop_string_cuts_the_real_output(client: openai.OpenAI, baseline: str) -> None:
    word = _cut_word(baseline)
    reply = _chat(client, max_tokens=32, stop=word)
    content = reply.choices[0].message.content or ""
    assert content == baseline[: baseline.index(word)]  # everything before the stop, nothing of it
    assert reply.choices[0].finish_reason == "stop"


def test_stop_list_cuts_at_the_first_match(client: openai.OpenAI, baseline: str) -> None:
    word = _cut_word(baseline)
    reply = _chat(client, max_tokens=32, stop=["never-in-this-answer", word])
    content = reply.choices[0].message.content or ""
    assert content == baseline[: baseline.index(word)]
    assert reply.choices[0].finish_reason == "stop"


def test_stop_applies_to_streams(client: openai.OpenAI, baseline: str) -> None:
    word = _cut_word(baseline)
    stream = client.chat.completions.create(
        model="smollm2",
        messages=PROMPT,
        temperature=0,
        max_tokens=32,
        stop=[word],
        stream=True,
        extra_body={"cache": "bypass"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == baseline[: baseline.index(word)]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_max_completion_tokens_caps_usage(client: openai.OpenAI, baseline: str) -> None:
    reply = _chat(client, max_completion_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert reply.choices[0].finish_reason == "length"
    assert baseline.startswith(reply.choices[0].message.content or "")


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    reply = _chat(client, max_tokens=20, max_completion_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_top_p_is_applied_and_out_of_range_is_refused(client: openai.OpenAI, baseline: str) -> None:
    # At temperature 1 a nucleus this small holds only the most likely token: greedy output.
    narrow = _chat(client, max_tokens=32, temperature=1.0, top_p=1e-6, seed=7)
    assert narrow.choices[0].message.content == baseline
    wide = _chat(client, max_tokens=8, temperature=0.8, top_p=0.9, seed=7)
    assert wide.choices[0].message.content
    assert wide.usage is not None and 0 < wide.usage.completion_tokens <= 8
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, top_p=1.5, max_tokens=4)
    assert "top_p" in str(info.value)
