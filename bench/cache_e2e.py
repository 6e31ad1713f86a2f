"""Cache hits end to end (not a test): the whole mesh up, requests through Envoy answered from
the cache.

    .venv/bin/python -m bench.cache_e2e [--n 300] [--concurrency 32]

Warms one greedy request, then repeats it: sequentially (latency p50/p99 at concurrency 1) and
with `--concurrency` callers (hit throughput), over gRPC through Envoy and as OpenAI JSON through
Envoy + gateway. Every reply is checked to be a hit. Writes build/bench/cache_e2e.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
from llmesh.common.v1 import generation_pb2 as common
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from libs.keys import KeyStore
from libs.launch.mesh import Mesh, MeshConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "cache_e2e.json"
QUESTION = "What is the boiling point of water at sea level?"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure_hits(ask: Callable[[], Awaitable[bool]], n: int, conc: int) -> dict[str, float]:
    """Fill the cache, then time `n` sequential hits and the hit rate of `conc` concurrent callers.

    `ask` sends the request once and says whether it was a hit.
    """
    for _ in range(100):  # the first request fills the cache; the store runs off the response path
        if await ask():
            break
        await asyncio.sleep(0.1)

    async def one() -> float:
        t0 = time.perf_counter()
        hit = await ask()
        assert hit, "a repeated request missed the cache"
        return (time.perf_counter() - t0) * 1000

    lat = [await one() for _ in range(n)]
    t0 = time.perf_counter()

    async def worker() -> None:
        for _ in range(n // conc):
            await one()

    await asyncio.gather(*[worker() for _ in range(conc)])
    rps = (n // conc) * conc / (time.perf_counter() - t0)
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "rps": rps}


async def grpc_hits(mesh: Mesh, key: str, n: int, conc: int) -> dict[str, float]:
    request = pb.CreateChatCompletionRequest(
        messages=[common.ChatMessage(role="user", content=QUESTION)],
        options=pb.GenerationOptions(
            model="smollm2", sampling=common.SamplingParams(temperature=0, max_tokens=24)
        ),
    )
    md = [("authorization", f"Bearer {key}")]
    async with grpc.aio.insecure_channel(mesh.url.removeprefix("http://")) as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        async def ask() -> bool:
            reply = await stub.CreateChatCompletion(request, metadata=md, timeout=60)
            return bool(reply.route.cache == "hit")

        return await measure_hits(ask, n, conc)


async def openai_hits(mesh: Mesh, key: str, n: int, conc: int) -> dict[str, float]:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24,
            "temperature": 0}  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=mesh.url, headers=headers, timeout=60) as client:

        async def ask() -> bool:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.headers.get("x-llmesh-cache") == "hit"

        return await measure_hits(ask, n, conc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmesh-bench-cache-") as tmp:
        mesh = Mesh(MeshConfig(workdir=Path(tmp))).start()
        try:

            async def go() -> dict[str, Any]:
                store = KeyStore.from_url(mesh.redis_url)
                key, _ = await store.create("bench-cache")
                await store.close()
                return {
                    "grpc via envoy": await grpc_hits(mesh, key, ns.n, ns.concurrency),
                    "openai /v1 via envoy + gateway": await openai_hits(mesh, key, ns.n, ns.concurrency),
                }

            results = asyncio.run(go())
        finally:
            mesh.stop()
    print(f"\ncache hits through the whole mesh: {ns.n} sequential, then {ns.concurrency} concurrent callers")
    print(f"{'path':32} {'p50 ms':>8} {'p99 ms':>8} {'hits/s':>8}")
    for name, r in results.items():
        print(f"{name:32} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.0f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"n": ns.n, "concurrency": ns.concurrency, "results": results}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
