"""Cache service benchmark (not a test): exact-hit latency and throughput, semantic lookup at 100k.

    PYTHONPATH=libs/gen .venv/bin/python -m bench.cache [--entries 100000]

Starts its own redis-server and a `python -m services.cache` process on loopback, drives it
through the generated stub, prints a table and writes build/bench/cache.json. The false-hit
table is computed on tests/data/paraphrases.jsonl with the real embedder and the hit guards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.cache.v1 import cache_service_pb2 as pb
from llmesh.cache.v1 import cache_service_pb2_grpc as pb_grpc

from libs.embedding import SentenceEmbedder
from libs.embedding.build import build
from libs.testing.process import ManagedProcess, free_port
from libs.testing.redis_server import RedisServer
from services.cache.keys import Namespace
from services.cache.redis_store import RedisStore
from services.cache.semantic import guard_rejects

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "cache.json"
MODEL_DIR = ROOT / "build" / "models" / "minilm"
PAIRS = ROOT / "tests" / "data" / "paraphrases.jsonl"
THRESHOLDS = (0.7, 0.75, 0.78, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.95)


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


def false_hit_table(embedder: SentenceEmbedder) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    a = embedder.embed([r["a"] for r in rows])
    b = embedder.embed([r["b"] for r in rows])
    sim = (a * b).sum(axis=1)
    label = np.array([r["paraphrase"] for r in rows])
    allowed = np.array([not guard_rejects(r["a"], r["b"]) for r in rows])
    table = []
    for t in THRESHOLDS:
        above = sim >= t
        table.append({
            "threshold": t,
            "hit_rate_raw": float(above[label].mean()),
            "false_hit_rate_raw": float(above[~label].mean()),
            "hit_rate": float((above & allowed)[label].mean()),
            "false_hit_rate": float((above & allowed)[~label].mean()),
        })  # fmt: skip
    return table


async def fill_vectors(redis_url: str, ns: Namespace, n: int, dim: int) -> float:
    store = RedisStore.from_url(redis_url, timeout_s=30, slow_timeout_s=30, max_connections=32)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for begin in range(0, n, 2000):
        block = rng.standard_normal((min(2000, n - begin), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        await asyncio.gather(*(
            store.add_vector(ns, f"{begin + i:064x}", v.astype("<f4").tobytes(), 1_000_000, "bench")
            for i, v in enumerate(block)
        ))  # fmt: skip
    await store.close()
    return time.perf_counter() - started


def key(tenant: str, tokens: list[int], text: str = "") -> pb.CacheKey:
    return pb.CacheKey(tenant=tenant, model="smollm2", model_version="1", prompt_token_ids=tokens,
                       semantic_text=text)  # fmt: skip


async def run(entries: int) -> dict[str, object]:
    build(MODEL_DIR)
    embedder = SentenceEmbedder.load(MODEL_DIR, threads=1)
    redis = RedisServer(extra_args=["--maxmemory", "2gb", "--maxmemory-policy", "volatile-lru"]).start()
    port = free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "libs" / "gen"), str(ROOT)]),
           "LLMESH_CACHE_PORT": str(port), "LLMESH_CACHE_METRICS_PORT": "-1",
           "LLMESH_CACHE_REDIS_URL": redis.url, "LLMESH_CACHE_EMBEDDING_MODEL_DIR": str(MODEL_DIR),
           "LLMESH_CACHE_LOG_LEVEL": "WARNING"}  # fmt: skip
    server = ManagedProcess("cache", [sys.executable, "-m", "services.cache"], ROOT / "build/bench/cache.log",
                            env=env, cwd=ROOT).start()  # fmt: skip
    result: dict[str, object] = {}
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            try:
                if (await health.Check(health_pb2.HealthCheckRequest())).status == 1:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        stub = pb_grpc.CacheServiceStub(channel)

        # Exact hits, concurrency 1.
        hit_key = key("bench", list(range(200)))
        await stub.Store(pb.StoreRequest(key=hit_key, response=pb.CachedResponse(text="x" * 400)))
        request = pb.LookupRequest(key=hit_key)
        for _ in range(200):
            await stub.Lookup(request)
        lat = []
        for _ in range(3000):
            t0 = time.perf_counter()
            reply = await stub.Lookup(request)
            lat.append(time.perf_counter() - t0)
            assert reply.hit
        result["exact_hit_c1_ms"] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "n": len(lat)}

        # Exact hits, concurrency 32.
        done = 0
        stop_at = time.perf_counter() + 5.0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.Lookup(request)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(32)))
        result["exact_hit_c32_rps"] = done / (time.perf_counter() - t0)

        # Semantic lookups in a namespace with `entries` vectors.
        ns = Namespace("bench", "smollm2", "1")
        result["fill_s"] = await fill_vectors(redis.url, ns, entries, embedder.dim)
        rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
        paraphrases = [r for r in rows if r["paraphrase"]]
        for i, r in enumerate(paraphrases):
            await stub.Store(pb.StoreRequest(key=key("bench", [10_000 + i], r["a"]),
                                             response=pb.CachedResponse(text=f"answer {i}")))  # fmt: skip
        t0 = time.perf_counter()
        await stub.Lookup(pb.LookupRequest(key=key("bench", [1], "warm up"), semantic=True), timeout=120)
        result["mirror_load_s"] = time.perf_counter() - t0
        lat, hits = [], 0
        for round_ in range(2):
            for i, r in enumerate(paraphrases):
                req = pb.LookupRequest(key=key("bench", [20_000 + i + 1000 * round_], r["b"]), semantic=True)
                t0 = time.perf_counter()
                reply = await stub.Lookup(req)
                lat.append(time.perf_counter() - t0)
                hits += reply.hit
        result["semantic_lookup_ms"] = {
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "n": len(lat),
            "entries": entries + len(paraphrases),
            "hit_rate": hits / len(lat),
        }
        t0 = time.perf_counter()
        for _ in range(50):
            embedder.embed(["Which city is the capital of France?"])
        result["embed_one_ms"] = (time.perf_counter() - t0) / 50 * 1000
        await channel.close()
    finally:
        server.stop()
        redis.stop()
    result["false_hits"] = false_hit_table(embedder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="vectors in the semantic namespace")
    args = parser.parse_args()
    result: dict[str, Any] = asyncio.run(run(args.entries))
    e, s = result["exact_hit_c1_ms"], result["semantic_lookup_ms"]
    print(f"{'metric':44} {'value':>12}")
    print(f"{'exact hit c=1 p50 / p99 (ms)':44} {e['p50']:6.2f} / {e['p99']:.2f}")
    print(f"{'exact hit c=32 throughput (req/s)':44} {result['exact_hit_c32_rps']:12.0f}")
    label = "semantic lookup p50 / p99 (ms), entries"
    print(f"{label:44} {s['p50']:6.2f} / {s['p99']:.2f}  n={s['entries']}")
    print(f"{'  of which embedding one prompt (ms)':44} {result['embed_one_ms']:12.2f}")
    print(f"{'mirror load of the namespace (s)':44} {result['mirror_load_s']:12.2f}")
    print(f"\n{'threshold':>9} {'hit':>7} {'false':>7} {'hit raw':>8} {'false raw':>9}")
    for row in result["false_hits"]:
        print(f"{row['threshold']:9.2f} {row['hit_rate']:7.3f} {row['false_hit_rate']:7.3f} "
              f"{row['hit_rate_raw']:8.3f} {row['false_hit_rate_raw']:9.3f}")  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
