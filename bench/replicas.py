"""Replica benchmark (not a test): 1 vs 2 inference replicas behind the router at 32 streams.

    .venv/bin/python -m bench.replicas [--streams 32] [--max-tokens 32] [--rounds 2]

Starts the mesh twice with the launcher (Redis, every service, Envoy), once with one inference
replica and once with two, and drives `--streams` concurrent StreamChatCompletion calls through
Envoy over gRPC (greedy, cache bypassed). Reports aggregate tokens/s, request latency p50/p99
and time to first token, and how the router spread requests over the replicas (from each
replica's `llmesh_inference_requests_total`-style counters on /metrics). On a 2-core machine two
replicas share the same cores: the run shows the balancing, not a speed-up. Writes
build/bench/replicas.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from llmesh.common.v1 import generation_pb2 as common
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.keys import KeyStore
from libs.launch.mesh import Mesh, MeshConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "replicas.json"
PROMPTS = [
    "Write one sentence about the sea.",
    "Name a colour and describe it briefly.",
    "Give a short tip for learning to cook.",
    "Describe a mountain in one sentence.",
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def one(stub: pb_grpc.RouterServiceStub, key: str, text: str, max_tokens: int) -> dict[str, float]:
    req = pb.StreamChatCompletionRequest(
        messages=[common.ChatMessage(role="user", content=text)],
        options=pb.GenerationOptions(
            model="smollm2",
            cache="bypass",
            sampling=common.SamplingParams(temperature=0, max_tokens=max_tokens),
        ),
    )
    t0 = time.perf_counter()
    ttft, tokens = 0.0, 0
    async for chunk in stub.StreamChatCompletion(
        req, metadata=[("authorization", f"Bearer {key}")], timeout=300
    ):
        if not ttft and any(c.content for c in chunk.choices):
            ttft = time.perf_counter() - t0
        if chunk.HasField("usage"):
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}


def served_by(mesh: Mesh, replicas: int) -> list[float]:
    """Completed generations per inference replica, read from its Prometheus endpoint."""
    counts = []
    for i in range(replicas):
        port = mesh.ports[f"inference-{i}-metrics"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        pattern = r'^llmesh_grpc_server_handled_total\{[^}]*method="GenerateStream"[^}]*\} (\S+)$'
        counts.append(sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M)))
    return counts


async def drive(mesh: Mesh, key: str, streams: int, max_tokens: int, rounds: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(mesh.url.removeprefix("http://")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        await one(stub, key, PROMPTS[0], 4)  # warm-up
        results: list[dict[str, float]] = []
        t0 = time.perf_counter()
        for _ in range(rounds):
            batch = [one(stub, key, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(streams)]
            results += await asyncio.gather(*batch)
        wall = time.perf_counter() - t0
    lat = [r["latency"] * 1000 for r in results]
    ttft = [r["ttft"] * 1000 for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_ms": round(pct(lat, 0.5), 1),
        "latency_p99_ms": round(pct(lat, 0.99), 1),
        "ttft_p50_ms": round(pct(ttft, 0.5), 1),
        "ttft_p99_ms": round(pct(ttft, 0.99), 1),
    }


def run(replicas: int, ns: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmesh-bench-replicas-") as tmp:
        mesh = Mesh(MeshConfig(workdir=Path(tmp), inference_replicas=replicas, with_gateway=False)).start()
        try:

            async def go() -> dict[str, Any]:
                store = KeyStore.from_url(mesh.redis_url)
                key, _ = await store.create("bench")
                await store.close()
                return await drive(mesh, key, ns.streams, ns.max_tokens, ns.rounds)

            result = asyncio.run(go())
            result["generations_per_replica"] = served_by(mesh, replicas)
            return result
        finally:
            mesh.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    ns = parser.parse_args()
    table = {str(n): run(n, ns) for n in (1, 2)}
    print(f"\n{ns.streams} concurrent streams x {ns.rounds} rounds, {ns.max_tokens} greedy tokens via Envoy")
    head = ("replicas", "tok/s", "p50 ms", "p99 ms", "TTFT p50", "TTFT p99")
    print(" ".join(f"{h:>9}" for h in head) + "  per replica")
    for n, r in table.items():
        print(
            f"{n:>8} {r['tokens_per_s']:>8.1f} {r['latency_p50_ms']:>9.0f} {r['latency_p99_ms']:>9.0f} "
            f"{r['ttft_p50_ms']:>9.0f} {r['ttft_p99_ms']:>9.0f}  {r['generations_per_replica']}"
        )
    print("(2 cores: both replicas share them, so this shows the balancing, not a speed-up)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"config": vars(ns), "results": table}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
