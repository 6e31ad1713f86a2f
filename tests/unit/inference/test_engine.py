"""Engine behaviour against the real int8 model (CPU only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from libs.runtime.errors import InvalidArgument, ResourceExhausted
from services.inference.engine import Engine, EngineConfig
from services.inference.generation import Delta, FinishReason, GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder
from services.inference.text_stream import REPLACEMENT

Chat = Callable[[str], tuple[int, ...]]


async def _run(engine: Engine, prompt: tuple[int, ...], **sampling: object) -> tuple[list[int], str, Delta]:
    tokens: list[int] = []
    text: list[str] = []
    last: Delta | None = None
    async for delta in engine.generate(GenerationRequest(prompt, SamplingConfig(**sampling))):  # type: ignore[arg-type]
        tokens += delta.token_ids
        text.append(delta.text)
        assert REPLACEMENT not in delta.text
        last = delta
    assert last is not None and last.finished
    return tokens, "".join(text), last


async def _wait_idle(engine: Engine) -> None:
    for _ in range(500):
        if engine.running == 0 and engine.queued == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still busy: running={engine.running} queued={engine.queued}")


async def test_greedy_is_deterministic_and_answers(engine: Engine, chat: Chat) -> None:
    prompt = chat("What is the capital of France?")
    a = await _run(engine, prompt, max_tokens=40)
    b = await _run(engine, prompt, max_tokens=40)
    assert a[0] == b[0] and a[1] == b[1]
    assert "Paris" in a[1]


async def test_eos_finishes_with_stop_and_usage(engine: Engine, chat: Chat) -> None:
    prompt = chat("What is the capital of France?")
    tokens, _, last = await _run(engine, prompt, max_tokens=60)
    assert last.finish_reason is FinishReason.STOP
    assert last.usage is not None
    assert last.usage.completion_tokens == len(tokens) < 60
    assert last.usage.prompt_tokens == len(prompt)
    assert not set(tokens) & set(engine.folder.manifest.eos_token_ids)


async def test_max_tokens_finishes_with_length(engine: Engine, chat: Chat) -> None:
    tokens, _, last = await _run(engine, chat("Write a long story about a dragon."), max_tokens=7)
    assert last.finish_reason is FinishReason.LENGTH
    assert len(tokens) == 7
    assert last.usage is not None and last.usage.completion_tokens == 7


async def test_stop_sequence_is_cut_and_not_emitted(engine: Engine, chat: Chat) -> None:
    prompt = chat("Write a long story about a dragon.")
    _, full, _ = await _run(engine, prompt, max_tokens=40)
    words = full.split()
    stop = " " + words[len(words) // 2]
    expected = full[: full.index(stop)]
    _, text, last = await _run(engine, prompt, max_tokens=40, stop=[stop])
    assert text == expected
    assert stop not in text
    assert last.finish_reason is FinishReason.STOP


async def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(engine: Engine, chat: Chat) -> None:
    prompt = chat("Name three colours.")
    params = {"temperature": 1.0, "top_p": 0.95, "seed": 1234, "max_tokens": 24}
    alone = await _run(engine, prompt, **params)
    crowd = await asyncio.gather(
        _run(engine, prompt, **params),
        *[_run(engine, chat(f"Count to {i}."), temperature=0.8, seed=i, max_tokens=30) for i in range(4)],
    )
    assert crowd[0][0] == alone[0]
    other = await _run(engine, prompt, **{**params, "seed": 99})
    assert other[0] != alone[0]


async def test_batched_greedy_matches_each_alone(engine: Engine, chat: Chat) -> None:
    questions = ["What is 2+2?", "Describe the sea.", "Who wrote Hamlet?", "List four fruits.", "Hi!", "Why?"]
    lengths = [12, 30, 20, 25, 5, 16]
    alone = [(await _run(engine, chat(q), max_tokens=n))[0] for q, n in zip(questions, lengths, strict=True)]
    together = await asyncio.gather(
        *[_run(engine, chat(q), max_tokens=n) for q, n in zip(questions, lengths, strict=True)]
    )
    assert [t[0] for t in together] == alone


async def test_cancellation_frees_the_slot(engine: Engine, chat: Chat) -> None:
    await _wait_idle(engine)
    stream = engine.generate(GenerationRequest(chat("Write a long essay."), SamplingConfig(max_tokens=300)))
    received = 0
    async for _ in stream:
        received += 1
        if received == 2:
            break
    await stream.aclose()
    await _wait_idle(engine)
    assert engine.running == 0


def test_over_long_prompt_names_the_limit(engine: Engine) -> None:
    prompt = tuple([42] * 500)
    with pytest.raises(InvalidArgument, match=str(engine.context_length)):
        engine.validate(GenerationRequest(prompt, SamplingConfig(max_tokens=100)))
    with pytest.raises(InvalidArgument, match="vocabulary"):
        engine.validate(GenerationRequest((1, 10**7)))
    with pytest.raises(InvalidArgument):
        engine.validate(GenerationRequest(()))


async def test_queue_full_raises_resource_exhausted(int8_folder: ModelFolder, chat: Chat) -> None:
    small = Engine(
        int8_folder,
        EngineConfig(max_batch=1, max_queue=1, max_context=256),
        EngineMetrics(CollectorRegistry()),
    )
    small.start()
    try:
        long = GenerationRequest(chat("Write a long essay."), SamplingConfig(max_tokens=200))
        seen: list[Delta] = []
        first = small.submit(long, seen.append)
        for _ in range(500):
            if small.running == 1:
                break
            await asyncio.sleep(0.01)
        second = small.submit(long, seen.append)
        assert small.queued == 1
        with pytest.raises(ResourceExhausted) as err:
            small.submit(long, seen.append)
        assert (err.value.retry_after_s() or 0) > 0
        second.cancel()
        first.cancel()
        await _wait_idle(small)
        assert not any(d.finished for d in seen)
    finally:
        small.stop()
