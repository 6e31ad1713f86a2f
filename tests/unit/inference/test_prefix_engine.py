"""The prefix cache on the real int8 model: a hit gives the same greedy tokens as no cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

from services.inference.engine import Engine, EngineConfig
from services.inference.generation import GenerationRequest, SamplingConfig
from services.inference.metrics import EngineMetrics
from services.inference.model_info import ModelFolder

BLOCK = 16
SYSTEM = (
    "You are Atlas, the support assistant of the Northwind travel agency. Answer in at most two "
    "sentences, be polite, never invent prices, and point customers to the booking page when they "
    "ask about availability."
)


def _engine(folder: ModelFolder, cache_tokens: int) -> tuple[Engine, CollectorRegistry]:
    registry = CollectorRegistry()
    config = EngineConfig(
        max_batch=4, max_queue=8, max_context=512, prefix_cache_tokens=cache_tokens, prefix_block_tokens=BLOCK
    )
    return Engine(folder, config, EngineMetrics(registry)), registry


@pytest.fixture(scope="module")
def plain(int8_folder: ModelFolder) -> Iterator[Engine]:
    eng, _ = _engine(int8_folder, 0)
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def cached(int8_folder: ModelFolder) -> Iterator[tuple[Engine, CollectorRegistry]]:
    eng, registry = _engine(int8_folder, 1024)
    eng.start()
    yield eng, registry
    eng.stop()


@pytest.fixture(scope="module")
def render(tokenizer: Tokenizer):
    def chat(system: str, question: str) -> tuple[int, ...]:
        text = (
            f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        )
        return tuple(tokenizer.encode(text).ids)

    return chat


async def _run(engine: Engine, prompt: tuple[int, ...], max_tokens: int = 24) -> tuple[list[int], int, int]:
    """Greedy tokens, prompt tokens reused from the cache, largest batch seen."""
    tokens: list[int] = []
    reused, batch = -1, 0
    async for delta in engine.generate(GenerationRequest(prompt, SamplingConfig(max_tokens=max_tokens))):
        if reused < 0:
            reused = delta.cached_tokens
        tokens += delta.token_ids
        batch = max(batch, delta.batch_size)
    return tokens, reused, batch


def _sample(registry: CollectorRegistry, name: str, engine: Engine) -> float:
    return registry.get_sample_value(name, {"model": engine.name}) or 0.0


async def test_a_hit_over_several_blocks_gives_the_same_tokens(plain: Engine, cached, render) -> None:
    engine, registry = cached
    first = render(SYSTEM, "Can I bring my dog on a flight to Lisbon?")
    second = render(SYSTEM, "Do you sell train tickets in Italy?")
    system_tokens = len(render(SYSTEM, ""))
    assert system_tokens > 2 * BLOCK
    hits = _sample(registry, "llmesh_inference_prefix_cache_hits_total", engine)

    tokens, reused, _ = await _run(engine, first)
    assert reused == 0 or reused % BLOCK == 0  # an earlier test may have cached the system prompt
    assert tokens == (await _run(plain, first))[0]

    tokens, reused, _ = await _run(engine, second)
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert reused == shared // BLOCK * BLOCK > BLOCK
    assert tokens == (await _run(plain, second))[0]

    # The same prompt again reuses every full block but the last token's.
    tokens, reused, _ = await _run(engine, second)
    assert reused == (len(second) - 1) // BLOCK * BLOCK
    assert tokens == (await _run(plain, second))[0]
    assert _sample(registry, "llmesh_inference_prefix_cache_hits_total", engine) == hits + 2


async def test_two_requests_sharing_a_prefix_in_one_batch(plain: Engine, cached, render) -> None:
    engine, registry = cached
    system = SYSTEM.replace("Atlas", "Boreas").replace("Northwind", "Southwind")
    prompts = [render(system, "Is breakfast included at the hotel?"), render(system, "How do I cancel?")]
    alone = [(await _run(plain, p))[0] for p in prompts]
    reused_before = _sample(registry, "llmesh_inference_prefix_reused_tokens_total", engine)

    together = await asyncio.gather(*(_run(engine, p) for p in prompts))

    assert [t[0] for t in together] == alone
    assert max(t[2] for t in together) == 2  # they decoded in the same batch
    reused = sorted(t[1] for t in together)
    assert reused[0] == 0 and reused[1] > BLOCK  # the second prefill reused the first's blocks
    after = _sample(registry, "llmesh_inference_prefix_reused_tokens_total", engine)
    assert after - reused_before == reused[1]


async def test_prefill_event_carries_the_reused_length(cached, render) -> None:
    engine, _ = cached
    prompt = render(SYSTEM, "What documents do I need for Canada?")
    await _run(engine, prompt, max_tokens=2)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("test").start_as_current_span("again"):
        _, reused, _ = await _run(engine, prompt, max_tokens=2)
    (span,) = memory.get_finished_spans()
    (prefill,) = [dict(e.attributes or {}) for e in span.events if e.name == "prefill"]
    assert prefill["llmesh.prefix_reused_tokens"] == reused == (len(prompt) - 1) // BLOCK * BLOCK


async def test_no_cache_engine_reports_no_reuse(plain: Engine, render) -> None:
    prompt = render(SYSTEM, "Hello!")
    await _run(plain, prompt, max_tokens=2)
    assert plain.prefix_cache is None
    assert (await _run(plain, prompt, max_tokens=2))[1] == 0
