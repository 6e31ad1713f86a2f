"""Inference benchmark: throughput and latency per backend and concurrency, plus per-tier quality.

``python bench/inference.py`` (from the repo root, with ``PYTHONPATH=libs/gen``) prints tables and
writes ``build/bench/inference.json``. Rows:

- engine fp32 / int8 / int4 (embedded continuous batching) at concurrency 1, 4, 16, 32;
- engine int8 and fp32 inside Triton (real tritonserver with the engine rows' limits, streamed
  over gRPC) at the same concurrencies;
- static-batch ONNX loop (int8, the same graph, plain past/present tensors, one fixed batch);
- transformers ``generate()`` fp32 at concurrency 1 and 4, serving requests one at a time as a
  naive server would (the 4 arrive together; each waits for the ones before it).

Every concurrent request decodes a fixed number of tokens (``ignore EOS`` is emulated by a
prompt that rarely ends early; finished-early requests just count fewer tokens). Higher
concurrencies use fewer tokens per request to keep the whole run under ~10 minutes.

Quality: teacher-forced top-1 agreement with fp32 and perplexity on ``bench/data/heldout.txt``,
and greedy agreement across batch compositions: the same prompts decoded alone, then inside
batches of other prompts (fixed groups, other partners, all at once, joining mid-decode), as the
fraction of sequences identical to the alone run and the fraction of token positions that agree.

``--sections`` picks parts and ``--concurrency``, ``--agreement-prompts``, ``--agreement-tokens``
shrink them for a quick check (write elsewhere with ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "libs" / "gen")]

from libs.launch.triton import start_triton  # noqa: E402
from services.inference.backends import EmbeddedBackend, ModelBackend  # noqa: E402
from services.inference.engine import EngineConfig  # noqa: E402
from services.inference.generation import GenerationRequest, SamplingConfig  # noqa: E402
from services.inference.kv_slots import KvSlots  # noqa: E402
from services.inference.metrics import EngineMetrics  # noqa: E402
from services.inference.model_info import ModelFolder  # noqa: E402
from services.inference.triton_backend import TritonBackend  # noqa: E402

MODELS = REPO / "build" / "models" / "smollm2-135m"
OUT = REPO / "build" / "bench" / "inference.json"
CONCURRENCY = (1, 4, 16, 32)
TRANSFORMERS_CONCURRENCY = (1, 4)
TRANSFORMERS_TOKENS = 32
PROMPT = "Write a long, detailed story about a journey across the mountains."
SECTIONS = ("engine", "triton", "static", "transformers", "quality", "agreement")
# Limits of every engine row; Triton's engine gets the same through the launcher's --set.
MAX_BATCH, MAX_QUEUE, MAX_CONTEXT = 32, 64, 512
AGREEMENT_QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about rain.",
    "List three animals that live in the sea.",
    "Explain what a compiler does in two sentences.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "Describe a sunset over the ocean.",
    "What are the planets of the solar system?",
    "Write a short poem about a cat.",
    "How do I boil an egg?",
    "Summarize the plot of Romeo and Juliet.",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a bakery.",
    "Count from one to ten in words.",
    "What does a carpenter do?",
)


def tokens_for(concurrency: int) -> int:
    return 64 if concurrency <= 4 else 32


@dataclass
class Row:
    backend: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    tok_per_s: float
    ms_per_token: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def chat_ids(tok: Tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tok.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n").ids)


async def drive(backend: ModelBackend, name: str, prompt: tuple[int, ...], concurrency: int) -> Row:
    n_tokens = tokens_for(concurrency)
    ttfts: list[float] = []
    itls: list[float] = []
    counts: list[int] = []

    async def one(i: int) -> None:
        req = GenerationRequest(prompt, SamplingConfig(temperature=0.8, seed=i, max_tokens=n_tokens))
        start = last = time.perf_counter()
        got = 0
        async for delta in backend.generate(req):
            now = time.perf_counter()
            if delta.token_ids:
                if got == 0:
                    ttfts.append((now - start) * 1000)
                else:
                    itls.append((now - last) * 1000)
                got += len(delta.token_ids)
                last = now
        counts.append(got)

    started = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(concurrency)])
    wall = time.perf_counter() - started
    total = sum(counts)
    return Row(
        name,
        concurrency,
        concurrency,
        total,
        round(wall, 3),
        round(total / wall, 1),
        round(statistics.fmean(itls), 2) if itls else float("nan"),
        round(pct(ttfts, 50), 1),
        round(pct(ttfts, 99), 1),
        round(pct(itls, 50), 2),
        round(pct(itls, 99), 2),
    )


def engine_backend(precision: str) -> EmbeddedBackend:
    config = EngineConfig(max_batch=MAX_BATCH, max_queue=MAX_QUEUE, max_context=MAX_CONTEXT)
    return EmbeddedBackend(ModelFolder.load(MODELS / precision), config, EngineMetrics(CollectorRegistry()))


async def bench_engine(precision: str, prompt: tuple[int, ...], levels: tuple[int, ...]) -> list[Row]:
    backend = engine_backend(precision)
    await backend.start()
    try:
        return [await drive(backend, f"engine {precision}", prompt, c) for c in levels]
    finally:
        await backend.stop()


async def bench_triton(prompt: tuple[int, ...], levels: tuple[int, ...]) -> list[Row]:
    precisions = ("int8", "fp32")
    served = ",".join(f"smollm2-135m-{p}" for p in precisions)
    limits = [f"max_batch={MAX_BATCH}", f"max_queue={MAX_QUEUE}", f"max_context={MAX_CONTEXT}"]
    args = ["--build-dir", str(REPO / "build" / "bench" / "triton"), "--models", served]
    args += [a for limit in limits for a in ("--set", limit)]
    proc, grpc_port = start_triton(
        REPO / "build" / "bench" / "tritonserver.log",
        ready_model="smollm2-135m-int8",
        timeout_s=180,
        launcher_args=args,
    )
    rows: list[Row] = []
    try:
        for precision in precisions:
            backend = TritonBackend(f"127.0.0.1:{grpc_port}", ModelFolder.load(MODELS / precision))
            await backend.start()
            try:
                rows += [await drive(backend, f"triton {precision}", prompt, c) for c in levels]
            finally:
                await backend.stop()
    finally:
        proc.stop(grace_s=10)
    return rows


def bench_static(prompt: tuple[int, ...], levels: tuple[int, ...]) -> list[Row]:
    """A fixed batch decoded in lockstep with plain past/present tensors (copies the cache each step)."""
    folder = ModelFolder.load(MODELS / "int8")
    lay = folder.layout
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(folder.graph), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    rows = []
    for batch in levels:
        n_tokens = tokens_for(batch)
        ids = np.array([prompt] * batch, np.int64)
        feeds: dict[str, np.ndarray] = {lay.input_ids: ids, lay.attention_mask: np.ones_like(ids)}
        for layer in range(lay.num_layers):
            for past in lay.past_names(layer):
                feeds[past] = np.zeros((batch, lay.num_kv_heads, 0, lay.head_size), np.float32)
        started = time.perf_counter()
        stamps = []
        for _ in range(n_tokens):
            out = dict(zip(names, sess.run(None, feeds), strict=True))
            stamps.append(time.perf_counter())
            nxt = out[lay.logits][:, -1].argmax(-1).reshape(batch, 1)
            mask = feeds[lay.attention_mask]
            feeds = {lay.input_ids: nxt, lay.attention_mask: np.ones((batch, mask.shape[1] + 1), np.int64)}
            for layer in range(lay.num_layers):
                for past, present in zip(lay.past_names(layer), lay.present_names(layer), strict=True):
                    feeds[past] = out[present]
        wall = time.perf_counter() - started
        itl = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
        ttft = (stamps[0] - started) * 1000
        rows.append(
            Row(
                "static onnx int8",
                batch,
                batch,
                batch * n_tokens,
                round(wall, 3),
                round(batch * n_tokens / wall, 1),
                round(statistics.fmean(itl), 2),
                round(ttft, 1),
                round(ttft, 1),
                round(pct(itl, 50), 2),
                round(pct(itl, 99), 2),
            )
        )
    return rows


def bench_transformers(prompt: tuple[int, ...], levels: tuple[int, ...]) -> list[Row]:
    """transformers' generate() behind a naive server: the requests arrive together and are served
    one after another, so a request's TTFT includes the generations before it."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """Time of every generated token (the first put is the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.puts = 0

        def put(self, value: object) -> None:
            self.puts += 1
            if self.puts > 1:
                self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(MODELS / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    n = TRANSFORMERS_TOKENS
    rows = []
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        for concurrency in (c for c in levels if c in TRANSFORMERS_CONCURRENCY):
            ttfts: list[float] = []
            itls: list[float] = []
            started = time.perf_counter()
            for _ in range(concurrency):
                stamps = Stamps()
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=stamps)
                ttfts.append((stamps.times[0] - started) * 1000)
                itls += [(b - a) * 1000 for a, b in itertools.pairwise(stamps.times)]
            wall = time.perf_counter() - started
            total = concurrency * n
            rows.append(
                Row(
                    "transformers generate fp32 (one at a time)",
                    concurrency,
                    concurrency,
                    total,
                    round(wall, 3),
                    round(total / wall, 1),
                    round(statistics.fmean(itls), 2),
                    round(pct(ttfts, 50), 1),
                    round(pct(ttfts, 99), 1),
                    round(pct(itls, 50), 2),
                    round(pct(itls, 99), 2),
                )
            )
    return rows


def teacher_forced(precision: str, ids: list[int]) -> np.ndarray:
    folder = ModelFolder.load(MODELS / precision)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(folder.graph), opts, providers=["CPUExecutionProvider"])
    kv = KvSlots(folder.layout, 1, len(ids))
    binding = sess.io_binding()
    binding.bind_cpu_input(folder.layout.input_ids, np.array([ids], np.int64))
    binding.bind_cpu_input(folder.layout.attention_mask, np.ones((1, len(ids)), np.int64))
    binding.bind_output(folder.layout.logits)
    kv.bind(binding, 0, 1)
    sess.run_with_iobinding(binding)
    logits: np.ndarray = binding.get_outputs()[0].numpy()[0]
    return logits


def quality() -> dict[str, dict[str, float]]:
    tok = Tokenizer.from_file(str(MODELS / "fp32" / "tokenizer.json"))
    ids = tok.encode((REPO / "bench" / "data" / "heldout.txt").read_text()).ids
    logits = {p: teacher_forced(p, ids) for p in ("fp32", "int8", "int4")}
    ref_top1 = logits["fp32"][:-1].argmax(-1)
    targets = np.array(ids[1:])
    result = {}
    for precision, lg in logits.items():
        lg = lg[:-1].astype(np.float64)
        logz = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        nll = logz - lg[np.arange(len(targets)), targets]
        result[precision] = {
            "top1_agreement_vs_fp32": round(float((lg.argmax(-1) == ref_top1).mean()), 4),
            "perplexity": round(math.exp(float(nll.mean())), 3),
            "tokens": len(targets),
        }
    return result


async def greedy(
    backend: ModelBackend, prompt: tuple[int, ...], n_tokens: int, delay_s: float = 0.0
) -> list[int]:
    """Greedy token ids of one request, after an optional delay (to join a running batch)."""
    await asyncio.sleep(delay_s)
    request = GenerationRequest(prompt, SamplingConfig(max_tokens=n_tokens))
    return [t async for d in backend.generate(request) for t in d.token_ids]


def compositions(n: int) -> dict[str, list[list[int]]]:
    """Named ways to group prompt indices 0..n-1 into concurrent batches."""
    group = min(4, n)
    width = max(1, n // group)
    return {
        f"batches of {group}": [list(range(i, min(i + group, n))) for i in range(0, n, group)],
        f"batches of {group}, other partners": [list(range(i, n, width)) for i in range(width)],
        f"all {n} at once": [list(range(n))],
    }


def agreement_of(alone: list[list[int]], other: list[list[int]]) -> dict[str, float]:
    """Sequences identical to the alone run, and token positions that agree (over the alone run's
    length; a sequence that stops early disagrees on the positions it lacks)."""
    same = sum(a == b for a, b in zip(alone, other, strict=True))
    total = sum(len(a) for a in alone)
    agree = sum(x == y for a, b in zip(alone, other, strict=True) for x, y in zip(a, b, strict=False))
    first = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None) for a, b in
             zip(alone, other, strict=True)]  # fmt: skip
    diverged = [f for f in first if f is not None]
    return {
        "sequences": len(alone),
        "sequences_identical": round(same / len(alone), 4),
        "token_agreement": round(agree / total, 4) if total else 1.0,
        "first_divergence_mean": round(statistics.fmean(diverged), 1) if diverged else float("nan"),
    }


async def batch_agreement(
    precision: str, prompts: list[tuple[int, ...]], n_tokens: int
) -> dict[str, dict[str, float]]:
    """Greedy output of each prompt alone vs inside batches of other prompts, on one engine."""
    backend = engine_backend(precision)
    await backend.start()
    try:
        alone = [await greedy(backend, p, n_tokens) for p in prompts]
        result = {}
        for name, groups in compositions(len(prompts)).items():
            out: list[list[int]] = [[] for _ in prompts]
            for group in groups:
                got = await asyncio.gather(*(greedy(backend, prompts[i], n_tokens) for i in group))
                for i, tokens in zip(group, got, strict=True):
                    out[i] = tokens
            result[name] = agreement_of(alone, out)
        # Every prompt joins a batch that is already decoding: one new arrival every few steps.
        stagger = await asyncio.gather(
            *(greedy(backend, p, n_tokens, 0.05 * i) for i, p in enumerate(prompts))
        )
        result["joining mid-decode"] = agreement_of(alone, list(stagger))
        return result
    finally:
        await backend.stop()


def print_rows(rows: list[Row]) -> None:
    header = f"{'backend':42} {'conc':>4} {'tokens':>6} {'tok/s':>7} {'ms/tok':>7} {'TTFT p50':>9} "
    header += f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}"
    print(header)
    for r in rows:
        print(
            f"{r.backend:42} {r.concurrency:>4} {r.tokens:>6} {r.tok_per_s:>7} {r.ms_per_token:>7} "
            f"{r.ttft_p50_ms:>9} {r.ttft_p99_ms:>9} {r.itl_p50_ms:>8} {r.itl_p99_ms:>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma list")
    parser.add_argument("--agreement-prompts", type=int, default=len(AGREEMENT_QUESTIONS))
    parser.add_argument("--agreement-tokens", type=int, default=48)
    parser.add_argument("--agreement-precisions", default="fp32,int8,int4")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if sections - set(SECTIONS):
        parser.error(f"unknown sections {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    levels = tuple(int(c) for c in args.concurrency.split(","))
    tok = Tokenizer.from_file(str(MODELS / "int8" / "tokenizer.json"))
    prompt = chat_ids(tok, PROMPT)
    rows: list[Row] = []
    if "engine" in sections:
        for precision in ("fp32", "int8", "int4"):
            rows += asyncio.run(bench_engine(precision, prompt, levels))
    if "triton" in sections:
        rows += asyncio.run(bench_triton(prompt, levels))
    if "static" in sections:
        rows += bench_static(prompt, levels)
    if "transformers" in sections:
        rows += bench_transformers(prompt, levels)
    payload: dict[str, object] = {
        "machine": "2 CPU cores, onnxruntime CPU, 2 intra-op threads",
        "tokens_per_request": {str(c): tokens_for(c) for c in levels},
        "transformers_tokens_per_request": TRANSFORMERS_TOKENS,
        "rows": [asdict(r) for r in rows],
    }
    print_rows(rows)
    if "quality" in sections:
        qual = quality()
        payload["quality"] = qual
        held_out = qual["fp32"]["tokens"]
        print(f"\n{'precision':10} {'top-1 vs fp32':>14} {'perplexity':>11}  (held-out: {held_out} tokens)")
        for precision, q in qual.items():
            print(f"{precision:10} {q['top1_agreement_vs_fp32']:>14} {q['perplexity']:>11}")
    if "agreement" in sections:
        prompts = [chat_ids(tok, q) for q in AGREEMENT_QUESTIONS[: args.agreement_prompts]]
        precisions = [p.strip() for p in args.agreement_precisions.split(",") if p.strip()]
        agreement = {p: asyncio.run(batch_agreement(p, prompts, args.agreement_tokens)) for p in precisions}
        payload["batch_agreement"] = {
            "prompts": len(prompts),
            "tokens_per_request": args.agreement_tokens,
            "results": agreement,
        }
        print(f"\ngreedy agreement with each prompt decoded alone ({len(prompts)} prompts, "
              f"{args.agreement_tokens} tokens):")  # fmt: skip
        print(f"{'precision':10} {'composition':32} {'identical':>10} {'tokens':>8} {'1st diff':>9}")
        for precision, by_name in agreement.items():
            for name, a in by_name.items():
                print(f"{precision:10} {name:32} {a['sequences_identical']:>10} {a['token_agreement']:>8} "
                      f"{a['first_divergence_mean']:>9}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
