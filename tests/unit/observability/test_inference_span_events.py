"""The inference engine reports each request's queue wait, prefill and decode steps (with the
batch size of every step) as events on the caller's span."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

from services.inference.engine import Engine, EngineConfig
from services.inference.generation import GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder

INT8 = Path(__file__).resolve().parents[3] / "build" / "models" / "smollm2-135m" / "int8"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if not (INT8 / "llmesh-model.json").exists():
        pytest.fail(f"model not built: run `make model` (missing {INT8})")
    eng = Engine(ModelFolder.load(INT8), EngineConfig(max_batch=4, max_queue=8, max_context=256),
                 EngineMetrics(CollectorRegistry()))  # fmt: skip
    eng.start()
    yield eng
    eng.stop()


def _prompt(question: str) -> tuple[int, ...]:
    tokenizer = Tokenizer.from_file(str(INT8 / "tokenizer.json"))
    return tuple(tokenizer.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n").ids)


async def _traced_run(engine: Engine, tracer: trace.Tracer, question: str) -> int:
    """One generation inside its own span; returns the completion token count."""
    with tracer.start_as_current_span(question):
        request = GenerationRequest(_prompt(question), SamplingConfig(max_tokens=NEW_TOKENS))
        completion = 0
        async for delta in engine.generate(request):
            if delta.usage is not None:
                completion = delta.usage.completion_tokens
        return completion


def _events(span: ReadableSpan, name: str) -> list[dict]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_decode_steps_carry_batch_size_and_tokens(engine: Engine) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    questions = ["Name three colours.", "Count to ten.", "Say hello in French."]
    counts = await asyncio.gather(*(_traced_run(engine, tracer, q) for q in questions))
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert set(spans) == set(questions)
    batch_seen = 0
    for question, completion in zip(questions, counts, strict=True):
        span = spans[question]
        assert (span.attributes or {})["llmesh.model"] == engine.name
        assert len(_events(span, "queue_wait")) == 1 and len(_events(span, "prefill")) == 1
        steps = _events(span, "decode_step")
        # The first token comes from the prefill; every later one from a decode step.
        assert 2 <= completion <= NEW_TOKENS and len(steps) == completion - 1
        assert all(s["llmesh.tokens"] == 1 and 1 <= s["llmesh.batch_size"] <= 4 for s in steps)
        # Each event is stamped when what it describes happened: the wait ends, then the prefill
        # gives the first token, then the decode steps follow.
        stamps = {e.name: e.timestamp for e in reversed(span.events)}  # first of each name
        assert span.start_time is not None
        assert span.start_time <= stamps["queue_wait"] <= stamps["prefill"] <= stamps["decode_step"]
        prefill_ms = _events(span, "prefill")[0]["llmesh.ttft_ms"]
        assert abs((stamps["prefill"] - stamps["queue_wait"]) / 1e6 - prefill_ms) < 0.01
        (done,) = _events(span, "decode")
        assert done["llmesh.decode_steps"] == len(steps)
        assert done["llmesh.batch_size_max"] == max(s["llmesh.batch_size"] for s in steps)
        assert done["llmesh.completion_tokens"] == completion
        batch_seen = max(batch_seen, done["llmesh.batch_size_max"])
    assert batch_seen >= 2  # three concurrent requests shared at least one decode step
