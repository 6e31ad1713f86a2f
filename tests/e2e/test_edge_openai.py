"""The official `openai` client against the whole mesh through real Envoy and the gateway."""

from __future__ import annotations

import openai
import pytest

from libs.launch.mesh import Mesh

pytestmark = pytest.mark.e2e
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def client(mesh: Mesh, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.url}/v1", api_key=api_key, max_retries=0, timeout=120)


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert "smollm2-135m-int8" in ids
    assert client.models.retrieve("smollm2").id == "smollm2-135m-int8"  # aliases resolve


def test_chat_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=12
    )
    reply = raw.parse()
    assert "paris" in (reply.choices[0].message.content or "").lower()
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert len(raw.headers["x-llmesh-trace-id"]) == 32
    assert raw.headers["x-llmesh-cache"] in ("hit", "miss", "bypass")


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count from one to five."}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [finishes[-1]] and finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_text_completion(client: openai.OpenAI) -> None:
    done = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert done.object == "text_completion"
    assert done.choices[0].text.strip()
    assert done.usage is not None and done.usage.prompt_tokens > 0


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def ask() -> str:
        reply = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Write a word."}],
            temperature=1.0,
            seed=1234,
            max_tokens=8,
            extra_body={"cache": "bypass"},
        )
        return reply.choices[0].message.content or ""

    assert ask() == ask()


def test_errors_are_typed_by_the_sdk(mesh: Mesh, client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="llm-0123456789abcdef-" + "a" * 40).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], n=2)
    assert info.value.param == "n"
