"""Inference benchmark: throughput and latency per backend and concurrency, plus per-tier quality.

``python bench/inference.py`` (from the repo root, with ``PYTHONPATH=libs/gen``) prints a table and
writes ``build/bench/inference.json``. Rows:

- engine fp32 / int8 / int4 (embedded continuous batching) at concurrency 1, 4, 16, 32;
- engine int8 inside Triton (real tritonserver, streamed over gRPC) at the same concurrencies;
- static-batch ONNX loop (int8, the same graph, plain past/present tensors, one fixed batch);
- transformers ``generate()`` one request at a time (batch 1 only).

Every concurrent request decodes a fixed number of tokens (``ignore EOS`` is emulated by a
prompt that rarely ends early; finished-early requests just count fewer tokens). Higher
concurrencies use fewer tokens per request to keep the whole run under ~10 minutes.
Quality: teacher-forced top-1 agreement with fp32 and perplexity on ``bench/data/heldout.txt``.
"""

from __future__ import annotations

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
PROMPT = "Write a long, detailed story about a journey across the mountains."


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


async def bench_engine(precision: str, prompt: tuple[int, ...]) -> list[Row]:
    folder = ModelFolder.load(MODELS / precision)
    config = EngineConfig(max_batch=32, max_queue=64, max_context=512)
    backend = EmbeddedBackend(folder, config, EngineMetrics(CollectorRegistry()))
    await backend.start()
    try:
        return [await drive(backend, f"engine {precision}", prompt, c) for c in CONCURRENCY]
    finally:
        await backend.stop()


async def bench_triton(prompt: tuple[int, ...]) -> list[Row]:
    proc, grpc_port = start_triton(
        REPO / "build" / "bench" / "tritonserver.log", ready_model="smollm2-135m-int8", timeout_s=120
    )
    try:
        backend = TritonBackend(f"127.0.0.1:{grpc_port}", ModelFolder.load(MODELS / "int8"))
        await backend.start()
        try:
            return [await drive(backend, "triton int8", prompt, c) for c in CONCURRENCY]
        finally:
            await backend.stop()
    finally:
        proc.stop(grace_s=10)


def bench_static(prompt: tuple[int, ...]) -> list[Row]:
    """A fixed batch decoded in lockstep with plain past/present tensors (copies the cache each step)."""
    folder = ModelFolder.load(MODELS / "int8")
    lay = folder.layout
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(folder.graph), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    rows = []
    for batch in CONCURRENCY:
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


def bench_transformers(prompt: tuple[int, ...]) -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(MODELS / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    n_tokens = 32
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False)
    wall = time.perf_counter() - started
    made = out.shape[1] - ids.shape[1]
    ms = wall * 1000 / made
    return [
        Row("transformers generate fp32", 1, 1, made, round(wall, 3), round(made / wall, 1), round(ms, 2),
            float("nan"), float("nan"), float("nan"), float("nan"))
    ]  # fmt: skip


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


def main() -> None:
    tok = Tokenizer.from_file(str(MODELS / "int8" / "tokenizer.json"))
    prompt = chat_ids(tok, PROMPT)
    rows: list[Row] = []
    rows += asyncio.run(bench_engine("fp32", prompt))
    rows += asyncio.run(bench_engine("int8", prompt))
    rows += asyncio.run(bench_engine("int4", prompt))
    rows += asyncio.run(bench_triton(prompt))
    rows += bench_static(prompt)
    rows += bench_transformers(prompt)
    qual = quality()
    header = f"{'backend':28} {'conc':>4} {'tokens':>6} {'tok/s':>7} {'ms/tok':>7} {'TTFT p50':>9} "
    header += f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}"
    print(header)
    for r in rows:
        print(
            f"{r.backend:28} {r.concurrency:>4} {r.tokens:>6} {r.tok_per_s:>7} {r.ms_per_token:>7} "
            f"{r.ttft_p50_ms:>9} {r.ttft_p99_ms:>9} {r.itl_p50_ms:>8} {r.itl_p99_ms:>8}"
        )
    held_out = qual["fp32"]["tokens"]
    print(f"\n{'precision':10} {'top-1 vs fp32':>14} {'perplexity':>11}  (held-out: {held_out} tokens)")
    for precision, q in qual.items():
        print(f"{precision:10} {q['top1_agreement_vs_fp32']:>14} {q['perplexity']:>11}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": "2 CPU cores, onnxruntime CPU, 2 intra-op threads",
        "tokens_per_request": {str(c): tokens_for(c) for c in CONCURRENCY},
        "rows": [asdict(r) for r in rows],
        "quality": qual,
    }
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
