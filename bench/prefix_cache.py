"""Prefix-cache benchmark: time to first token with and without the engine's prompt-prefix cache.

``python bench/prefix_cache.py`` (from the repo root, with ``PYTHONPATH=libs/gen``) prints a table
and writes ``build/bench/prefix_cache.json``. The int8 engine runs once with the cache off and
once with it on, over the same prompts:

- ``default system``: SmolLM2's default system prompt (the chat template adds it) + a question;
- ``long system``: a ~600-token shared system prompt (a platform's instructions) + a question;

each sent one at a time (TTFT = prefill only) and 8 at once (TTFT includes waiting for the other
prefills). The first request of each workload warms the cache and is not counted. TTFT is the
engine's own submission-to-first-token time.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "libs" / "gen")]

from services.inference.engine import Engine, EngineConfig  # noqa: E402
from services.inference.generation import GenerationRequest, SamplingConfig  # noqa: E402
from services.inference.metrics import EngineMetrics  # noqa: E402
from services.inference.model_info import ModelFolder  # noqa: E402

OUT = REPO / "build" / "bench" / "prefix_cache.json"
INT8 = REPO / "build" / "models" / "smollm2-135m" / "int8"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
RULES = [
    "Answer in the customer's language and keep answers under five sentences.",
    "Never quote a price that is not on the official price list; point to the booking page instead.",
    "If a question is about a refund, ask for the booking reference before anything else.",
    "Do not give legal, medical or financial advice; suggest a qualified professional.",
    "Be polite, do not use slang, and never make promises about delays or compensation.",
    "Mention the 24-hour support line when a customer is travelling within the next two days.",
]
LONG_SYSTEM = "You are Atlas, the support assistant of the Northwind travel agency. " + " ".join(
    f"Rule {i + 1}: {rule}" for i, rule in enumerate(RULES * 4)
)
QUESTIONS = [
    "Can I change my flight to Lisbon?",
    "Where is my refund?",
    "Do you sell train tickets in Italy?",
    "Is breakfast included at the hotel?",
    "How do I cancel a booking?",
    "What documents do I need for Canada?",
    "May I bring my dog on board?",
    "Which airports serve Rome?",
    "Hello, are you a real person?",
    "Why was my card declined?",
    "Tell me about travel insurance.",
    "Can two children share one seat?",
    "My luggage is lost, what now?",
    "Are there direct buses from Porto to Madrid?",
    "Quick question about seat upgrades.",
    "Do hotels in Oslo have parking?",
    "Explain your loyalty programme.",
]
CONCURRENT = 8


@dataclass
class Row:
    workload: str
    cache: str
    concurrency: int
    prompt_tokens: int
    reused_tokens: float
    ttft_p50_ms: float
    ttft_mean_ms: float
    ttft_max_ms: float


def prompt(tok: Tokenizer, system: str, question: str) -> tuple[int, ...]:
    text = (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    return tuple(tok.encode(text).ids)


async def first_token(engine: Engine, ids: tuple[int, ...]) -> tuple[float, int]:
    """Submission to first token in ms, and the prompt tokens reused from the cache."""
    started = time.perf_counter()
    async for delta in engine.generate(GenerationRequest(ids, SamplingConfig(max_tokens=1))):
        if delta.token_ids or delta.finished:
            return (time.perf_counter() - started) * 1000, delta.cached_tokens
    raise RuntimeError("no token")


async def measure(
    engine: Engine, prompts: list[tuple[int, ...]], concurrency: int
) -> tuple[list[float], float]:
    await first_token(engine, prompts[0])  # warms the cache with the shared prefix (not counted)
    rest = prompts[1:]
    results: list[tuple[float, int]] = []
    if concurrency == 1:
        for ids in rest:
            results.append(await first_token(engine, ids))
    else:
        for i in range(0, len(rest), concurrency):
            results += await asyncio.gather(*(first_token(engine, ids) for ids in rest[i : i + concurrency]))
    return [r[0] for r in results], statistics.fmean(r[1] for r in results)


async def run(cache_tokens: int, folder: ModelFolder, tok: Tokenizer) -> list[Row]:
    engine = Engine(
        folder,
        EngineConfig(max_batch=16, max_queue=64, max_context=2048, prefix_cache_tokens=cache_tokens),
        EngineMetrics(CollectorRegistry()),
    )
    await asyncio.to_thread(engine.start)
    rows = []
    try:
        for workload, system, base in (
            ("default system", DEFAULT_SYSTEM, 0),
            ("long system", LONG_SYSTEM, 1),
        ):
            for concurrency in (1, CONCURRENT):
                # each run has its own questions, so only the system prompt is shared across runs
                prompts = [prompt(tok, system, f"[{base}/{concurrency}] {q}") for q in QUESTIONS]
                ttfts, reused = await measure(engine, prompts, concurrency)
                rows.append(
                    Row(
                        workload=workload,
                        cache="on" if cache_tokens else "off",
                        concurrency=concurrency,
                        prompt_tokens=round(statistics.fmean(len(p) for p in prompts)),
                        reused_tokens=round(reused, 1),
                        ttft_p50_ms=round(statistics.median(ttfts), 1),
                        ttft_mean_ms=round(statistics.fmean(ttfts), 1),
                        ttft_max_ms=round(max(ttfts), 1),
                    )
                )
    finally:
        await asyncio.to_thread(engine.stop)
    return rows


def main() -> None:
    folder = ModelFolder.load(INT8)
    tok = Tokenizer.from_file(str(INT8 / "tokenizer.json"))
    rows = asyncio.run(run(0, folder, tok)) + asyncio.run(run(4096, folder, tok))
    cols = ("prompt", "reused", "p50 ms", "mean ms", "max ms")
    print(f"{'workload':<15} {'cache':<5} {'conc':>4} " + " ".join(f"{c:>8}" for c in cols))
    for r in sorted(rows, key=lambda r: (r.workload, r.concurrency, r.cache)):
        print(
            f"{r.workload:<15} {r.cache:<5} {r.concurrency:>4} {r.prompt_tokens:>8} {r.reused_tokens:>8} "
            f"{r.ttft_p50_ms:>8} {r.ttft_mean_ms:>8} {r.ttft_max_ms:>8}"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "smollm2-135m-int8", "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
