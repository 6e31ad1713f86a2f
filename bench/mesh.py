"""Mesh overhead benchmark (not a test): the same generation through Envoy + router vs. direct.

    .venv/bin/python -m bench.mesh [--requests 100] [--max-tokens 16]

Starts the whole mesh with the launcher, libs/launch (Redis, tokenizer, safety, cache, one inference
replica, one router, the gateway and Envoy) on free ports. For concurrency 1 and 32 it runs the
same greedy generations (the same series of distinct prompts, so no memo or cache answers any of
them; same max_tokens; cache bypassed) twice: directly
on the inference service (`GenerateStream`) and end to end through Envoy to the router
(`StreamChatCompletion` over gRPC). At concurrency 1 the direct and mesh calls alternate, so
both see the same load on the machine. Overhead = mesh latency - direct latency, at the median
and at the 99th percentile (each series' own percentile; with 100 requests p99 is the 99th). The
per-hop split comes from the router's audit events (matched by `x-llmesh-request-id`): time in
each pipeline step, and the rest (Envoy, gRPC hops, the router's own work). Last, the CPU time
each process spends per request (direct-only, then mesh-only calls at concurrency 1): on a small
machine every millisecond of mesh CPU competes with the model's own threads. Prints a table and
writes build/bench/mesh.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.inference.v1 import inference_service_pb2 as inf_pb
from llmesh.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from llmesh.tokenizer.v1 import tokenizer_service_pb2 as tok_pb
from llmesh.tokenizer.v1 import tokenizer_service_pb2_grpc as tok_grpc

from libs.keys import KeyStore
from libs.launch.mesh import Mesh, MeshConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "mesh.json"
MODEL = "smollm2-135m-int8"
PROMPT = "Give one short sentence about the sea."
STEPS = ("rate_limit", "tokenize", "budget", "input_safety", "input_safety_wait", "cache_lookup",
         "first_token", "output_safety", "accounting")  # fmt: skip


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def direct(stub: inf_grpc.InferenceServiceStub, ids: list[int], max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    ttft, tokens = 0.0, 0
    req = inf_pb.GenerateStreamRequest(
        model=MODEL,
        prompt_token_ids=ids,
        sampling=gen_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    async for msg in stub.GenerateStream(req, timeout=120):
        if not ttft and msg.text:
            ttft = time.perf_counter() - t0
        tokens += len(msg.token_ids)
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}


def prompt(i: int) -> str:
    """The i-th prompt: each request asks something new, so no memo or cache anywhere answers it."""
    return f"{PROMPT} Reference {i:05d}."


async def through_mesh(
    stub: pb_grpc.RouterServiceStub, key: str, max_tokens: int, text: str
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ttft, tokens = 0.0, 0
    req = pb.StreamChatCompletionRequest(
        messages=[gen_pb.ChatMessage(role="user", content=text)],
        options=pb.GenerationOptions(
            model=MODEL,
            cache="bypass",
            sampling=gen_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        ),
    )
    call = stub.StreamChatCompletion(req, metadata=(("authorization", f"Bearer {key}"),), timeout=120)
    async for chunk in call:
        if not ttft and chunk.choices and chunk.choices[0].content:
            ttft = time.perf_counter() - t0
        if chunk.HasField("usage"):
            tokens = chunk.usage.completion_tokens
    md = dict(await call.initial_metadata())
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens,
            "request_id": md.get("x-llmesh-request-id", "")}  # fmt: skip


async def run_level(fn: Any, concurrency: int, total: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    results: list[dict[str, Any]] = []

    async def one() -> None:
        async with sem:
            results.append(await fn())

    await asyncio.gather(*(one() for _ in range(total)))
    return results


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (all threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / tick
        todo.extend(children.get(p, []))
    return total


def rss_mb(mesh: Mesh) -> dict[str, float]:
    """Resident memory of each process (with its children), MiB, after the runs above."""
    out: dict[str, float] = {}
    for name, proc in mesh.procs.items():
        pids, todo = [], [proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            except OSError:
                continue
        kib = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
            kib += rss[0] if rss else 0
        out[name] = round(kib / 1024, 1)
    return out


async def cpu_per_request(mesh: Mesh, fn: Any, n: int) -> dict[str, float]:
    """CPU milliseconds each mesh process spends per call of `fn` (n sequential calls)."""
    pids = {name: proc.pid for name, proc in mesh.procs.items()}
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    for _ in range(n):
        await fn()
    return {name: (_cpu_s(pid) - before[name]) * 1000 / n for name, pid in pids.items()}


def audit_steps(log_path: Path, request_ids: set[str]) -> list[dict[str, Any]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"llmesh.audit"' not in line:
            continue
        event = json.loads(line)
        if event.get("request_id") in request_ids:
            events.append(event)
    return events


async def bench(mesh: Mesh, requests: int, max_tokens: int) -> dict[str, Any]:
    store = KeyStore.from_url(mesh.redis_url)
    key, _ = await store.create("bench")
    await store.close()
    envoy = f"127.0.0.1:{mesh.ports['envoy']}"
    async with (
        grpc.aio.insecure_channel(mesh.addr("inference-0")) as inf_ch,
        grpc.aio.insecure_channel(mesh.addr("tokenizer")) as tok_ch,
        grpc.aio.insecure_channel(envoy) as envoy_ch,
    ):
        tok = tok_grpc.TokenizerServiceStub(tok_ch)
        token_ids: list[list[int]] = []
        for i in range(8 * requests + 200):
            templated = await tok.ApplyChatTemplate(
                tok_pb.ApplyChatTemplateRequest(
                    model=MODEL,
                    messages=[gen_pb.ChatMessage(role="user", content=prompt(i))],
                    add_generation_prompt=True,
                )
            )
            token_ids.append(list(templated.token_ids))
        # direct call k and mesh call k send the same prompt; no prompt repeats within either series
        d_next, m_next = itertools.count(), itertools.count()
        ids = token_ids[0]
        inf, router = inf_grpc.InferenceServiceStub(inf_ch), pb_grpc.RouterServiceStub(envoy_ch)

        def run_direct() -> Any:
            return direct(inf, token_ids[next(d_next)], max_tokens)

        def run_mesh() -> Any:
            return through_mesh(router, key, max_tokens, prompt(next(m_next)))

        for _ in range(3):
            await run_direct()
            await run_mesh()
        levels: dict[str, Any] = {}
        for conc in (1, 32):
            total = requests if conc == 1 else max(requests, 4 * conc)
            if conc == 1:
                # Alternate direct and mesh calls so that both see the same load on the machine.
                d, m = [], []
                for _ in range(total):
                    d.append(await run_direct())
                    m.append(await run_mesh())
            else:
                d = await run_level(run_direct, conc, total)
                m = await run_level(run_mesh, conc, total)
            await asyncio.sleep(0.5)
            events = audit_steps(mesh.cfg.workdir / "router-0.log", {r["request_id"] for r in m})
            steps = (
                {s: statistics.median([e["steps_ms"].get(s, 0.0) for e in events]) for s in STEPS}
                if events
                else {}
            )
            router_ms = statistics.median([e["latency_ms"] for e in events]) if events else float("nan")
            mesh_ms = statistics.median([r["latency"] for r in m]) * 1000
            levels[str(conc)] = {
                "requests": total,
                "completion_tokens": statistics.median([r["tokens"] for r in m]),
                "direct_tokens": statistics.median([r["tokens"] for r in d]),
                "direct_p50_ms": statistics.median([r["latency"] for r in d]) * 1000,
                "direct_p99_ms": pct([r["latency"] for r in d], 0.99) * 1000,
                "mesh_p50_ms": mesh_ms,
                "mesh_p99_ms": pct([r["latency"] for r in m], 0.99) * 1000,
                "direct_ttft_p50_ms": statistics.median([r["ttft"] for r in d]) * 1000,
                "mesh_ttft_p50_ms": statistics.median([r["ttft"] for r in m]) * 1000,
                "direct_ttft_p99_ms": pct([r["ttft"] for r in d], 0.99) * 1000,
                "mesh_ttft_p99_ms": pct([r["ttft"] for r in m], 0.99) * 1000,
                "router_internal_p50_ms": router_ms,
                "envoy_and_hops_p50_ms": mesh_ms - router_ms,
                "router_steps_p50_ms": steps,
                "audited": len(events),
            }
            lv = levels[str(conc)]
            lv["overhead_p50_ms"] = lv["mesh_p50_ms"] - lv["direct_p50_ms"]
            lv["overhead_p99_ms"] = lv["mesh_p99_ms"] - lv["direct_p99_ms"]
            lv["overhead_ttft_p50_ms"] = lv["mesh_ttft_p50_ms"] - lv["direct_ttft_p50_ms"]
        cpu = {
            "direct": await cpu_per_request(mesh, run_direct, requests),
            "mesh": await cpu_per_request(mesh, run_mesh, requests),
        }
    return {"model": MODEL, "max_tokens": max_tokens, "prompt_tokens": len(ids), "levels": levels,
            "cpu_ms_per_request": cpu, "rss_mb": rss_mb(mesh)}  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(f"\nmesh overhead: {result['model']}, prompt {result['prompt_tokens']} tokens, "
          f"max_tokens {result['max_tokens']}, greedy, cache bypassed")  # fmt: skip
    cols = (
        "direct p50",
        "mesh p50",
        "added p50",
        "direct p99",
        "mesh p99",
        "added p99",
        "ttft dir",
        "ttft mesh",
    )
    keys = ("direct_p50_ms", "mesh_p50_ms", "overhead_p50_ms", "direct_p99_ms", "mesh_p99_ms",
            "overhead_p99_ms", "direct_ttft_p50_ms", "mesh_ttft_p50_ms")  # fmt: skip
    print(f"{'conc':>4} " + " ".join(f"{c:>11}" for c in cols) + f" {'tokens':>7}")
    for conc, lv in result["levels"].items():
        cells = " ".join(f"{lv[k]:>9.1f}ms" for k in keys)
        print(f"{conc:>4} {cells} {lv['completion_tokens']:>7.0f}")
    print("\nper-hop split (medians, ms): router steps from the audit log; rest = Envoy + gRPC hops + router")
    print(f"{'conc':>4} " + " ".join(f"{s:>13}" for s in (*STEPS, "envoy+hops")))
    for conc, lv in result["levels"].items():
        split = [lv["router_steps_p50_ms"].get(s, float("nan")) for s in STEPS]
        split.append(lv["envoy_and_hops_p50_ms"])
        print(f"{conc:>4} " + " ".join(f"{c:>13.2f}" for c in split))
    cpu = result["cpu_ms_per_request"]
    names = [n for n in cpu["mesh"] if cpu["mesh"][n] >= 0.05 or cpu["direct"][n] >= 0.05]
    print("\nresident memory (MiB): " + ", ".join(f"{n} {v:.0f}" for n, v in result["rss_mb"].items()))
    print("\nCPU ms per request, concurrency 1 (2 cores shared by every process)")
    print(f"{'':>6} " + " ".join(f"{n:>11}" for n in names) + f" {'total':>11}")
    for mode in ("direct", "mesh"):
        row = [cpu[mode][n] for n in names]
        print(f"{mode:>6} " + " ".join(f"{c:>11.2f}" for c in row) + f" {sum(cpu[mode].values()):>11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--requests", type=int, default=100, help="requests per level (at least 4x concurrency at c=32)"
    )
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmesh-bench-mesh-"))
    mesh = Mesh(MeshConfig(workdir=workdir, inference_replicas=1, router_replicas=1)).start()
    try:
        result = asyncio.run(bench(mesh, args.requests, args.max_tokens))
    finally:
        mesh.stop()
    print_table(result)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
