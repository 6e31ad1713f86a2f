"""Edge overhead: what Envoy, transcoding and the OpenAI gateway add to a router call, and the
cost of key authentication and rate limiting.

A stand-in router (`--serve-router`, a real grpc.aio server on the shared runtime that answers
at once) runs as its own process, as do the gateway and Envoy, so the numbers are the proxies'
own. Sequential calls give p50/p99 latency; 16 concurrent callers give throughput. Writes
build/bench/edge.json.

    .venv/bin/python -m bench.edge [--n 400] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis.asyncio as aioredis
from llmesh.common.v1 import generation_pb2 as gen_pb
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc

from deploy.envoy.render import EdgeConfig, build_descriptor, envoy_argv, write_config
from libs.keys import KeyStore
from libs.testing.process import ManagedProcess, free_port, port_open
from libs.testing.redis_server import redis_server
from services.router.limits import RateLimiter

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
ANSWER = "Paris is the capital of France."


class EchoRouter(pb_grpc.RouterServiceServicer):
    """Answers every call at once with a fixed completion."""

    async def CreateChatCompletion(self, request: Any, context: Any) -> pb.CreateChatCompletionResponse:
        return pb.CreateChatCompletionResponse(
            id="chatcmpl-bench",
            created=int(time.time()),
            model=request.options.model,
            choices=[
                pb.Choice(message=gen_pb.ChatMessage(role="assistant", content=ANSWER), finish_reason="stop")
            ],
            usage=gen_pb.Usage(prompt_tokens=12, completion_tokens=8, total_tokens=20),
        )

    async def StreamChatCompletion(self, request: Any, context: Any) -> Any:
        for i, word in enumerate(ANSWER.split()):
            yield pb.StreamChatCompletionResponse(
                id="chatcmpl-bench",
                model=request.options.model,
                choices=[pb.ChoiceDelta(role="assistant" if i == 0 else "", content=word + " ")],
            )
        yield pb.StreamChatCompletionResponse(
            id="chatcmpl-bench", choices=[pb.ChoiceDelta(finish_reason="stop")]
        )

    async def CreateCompletion(self, request: Any, context: Any) -> pb.CreateCompletionResponse:
        return pb.CreateCompletionResponse(id="cmpl-bench", choices=[pb.TextChoice(text=ANSWER)])

    async def StreamCompletion(self, request: Any, context: Any) -> Any:
        for word in ANSWER.split():
            yield pb.StreamCompletionResponse(id="cmpl-bench", choices=[pb.TextChoice(text=word + " ")])
        yield pb.StreamCompletionResponse(id="cmpl-bench", choices=[pb.TextChoice(finish_reason="stop")])

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.Model(id="bench-model")])

    async def GetUsage(self, request: Any, context: Any) -> pb.GetUsageResponse:
        return pb.GetUsageResponse(window=request.window or "day")


def serve_router(port: int) -> None:
    from libs.runtime.server import GrpcService
    from libs.runtime.settings import ServiceSettings

    service = GrpcService("router", ServiceSettings(port=port, metrics_port=-1))
    service.add_servicer(
        pb_grpc.add_RouterServiceServicer_to_server,
        EchoRouter(),
        pb.DESCRIPTOR.services_by_name["RouterService"].full_name,
    )
    asyncio.run(service.run())


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(call: Callable[[], Awaitable[object]], n: int, concurrency: int) -> dict[str, float]:
    for _ in range(20):
        await call()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t0) * 1000)
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[worker(t0 + 3.0) for _ in range(concurrency)])
    rps = done / (time.perf_counter() - t0)
    return {"p50_ms": statistics.median(lat), "p99_ms": pct(lat, 0.99), "rps": rps}


async def edge_paths(n: int, concurrency: int, tmp: Path) -> dict[str, dict[str, float]]:
    router_port, gw_port, envoy_port, admin_port = free_port(), free_port(), free_port(), free_port()
    env = {"OTEL_TRACES_EXPORTER": "none", "PYTHONUNBUFFERED": "1"}
    router_argv = [sys.executable, "-m", "bench.edge", "--serve-router", str(router_port)]
    router = ManagedProcess("router", router_argv, tmp / "router.log", env=env, cwd=ROOT).start()
    gateway = ManagedProcess(
        "gateway",
        [sys.executable, "-m", "services.gateway"],
        tmp / "gateway.log",
        env={**env, "LLMESH_GATEWAY_PORT": str(gw_port), "LLMESH_GATEWAY_METRICS_PORT": "-1",
             "LLMESH_GATEWAY_ROUTER_ADDR": f"127.0.0.1:{router_port}", "LLMESH_GATEWAY_LOG_LEVEL": "WARNING"},
        cwd=ROOT,
    ).start()  # fmt: skip
    cfg = EdgeConfig(
        listen_port=envoy_port,
        admin_port=admin_port,
        routers=(f"127.0.0.1:{router_port}",),
        gateways=(f"127.0.0.1:{gw_port}",),
        descriptor=build_descriptor(),
        global_rps=1_000_000,
        global_burst=1_000_000,
    )
    config = write_config(cfg, tmp / "envoy.yaml")
    envoy = ManagedProcess("envoy", envoy_argv(config, base_id=7000 + os.getpid() % 1000), tmp / "envoy.log")
    envoy.start()
    procs = [router, gateway, envoy]
    try:
        for proc, port in ((router, router_port), (gateway, gw_port), (envoy, envoy_port)):
            proc.wait_until(lambda p=port: port_open(p), 30, "listening")  # type: ignore[misc]
        await asyncio.sleep(0.5)
        md = [("authorization", f"Bearer {KEY}")]
        msg = [gen_pb.ChatMessage(role="user", content="What is the capital of France?")]
        req = pb.CreateChatCompletionRequest(messages=msg, options=pb.GenerationOptions(model="bench-model"))
        openai_body = {
            "model": "bench-model",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }
        rest_body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                     "options": {"model": "bench-model"}}  # fmt: skip
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        results: dict[str, dict[str, float]] = {}
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") as direct,
            grpc.aio.insecure_channel(f"127.0.0.1:{envoy_port}") as via_envoy,
            httpx.AsyncClient(headers=dict(md), limits=limits, timeout=30) as http,
        ):
            d_stub, e_stub = pb_grpc.RouterServiceStub(direct), pb_grpc.RouterServiceStub(via_envoy)

            async def stream_openai(base: str) -> None:
                body = {**openai_body, "stream": True}
                async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass

            cases: dict[str, Callable[[], Awaitable[object]]] = {
                "grpc direct to router": lambda: d_stub.CreateChatCompletion(req, metadata=md),
                "grpc via envoy": lambda: e_stub.CreateChatCompletion(req, metadata=md),
                "json /api/v1 via envoy (transcoded)": lambda: http.post(
                    f"http://127.0.0.1:{envoy_port}/api/v1/chat/completions", json=rest_body
                ),
                "openai /v1 direct to gateway": lambda: http.post(
                    f"http://127.0.0.1:{gw_port}/v1/chat/completions", json=openai_body
                ),
                "openai /v1 via envoy + gateway": lambda: http.post(
                    f"http://127.0.0.1:{envoy_port}/v1/chat/completions", json=openai_body
                ),
                "openai /v1 stream via envoy + gateway": lambda: stream_openai(
                    f"http://127.0.0.1:{envoy_port}"
                ),
            }
            for name, call in cases.items():
                results[name] = await measure(call, n, concurrency)
                print(f"  {name}: done", file=sys.stderr, flush=True)
        return results
    finally:
        for proc in reversed(procs):
            proc.stop(grace_s=5)


async def key_and_limit_costs(n: int) -> dict[str, dict[str, float]]:
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        store = KeyStore(client, pepper=b"bench")
        no_cache = KeyStore(client, pepper=b"bench", cache_ttl_s=0)
        key, record = await store.create("bench", rpm=10**9, tpm=10**12)
        limiter = RateLimiter(client)
        out = {
            "authenticate (cached)": await measure(lambda: store.authenticate(key), n, 16),
            "authenticate (redis, no cache)": await measure(lambda: no_cache.authenticate(key), n, 16),
            "rate limit acquire (lua)": await measure(lambda: limiter.acquire(record, 100), n, 16),
        }
        await client.aclose()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="sequential calls per case")
    parser.add_argument("--concurrency", type=int, default=16, help="callers for the throughput run")
    parser.add_argument("--serve-router", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_router:
        serve_router(args.serve_router)
        return
    with tempfile.TemporaryDirectory(prefix="llmesh-bench-edge-") as tmp:
        paths = asyncio.run(edge_paths(args.n, args.concurrency, Path(tmp)))
    costs = asyncio.run(key_and_limit_costs(args.n))
    rows = {**paths, **costs}
    print(f"\n{'case':<42} {'p50 ms':>8} {'p99 ms':>8} {'req/s @' + str(args.concurrency):>11}")
    for name, r in rows.items():
        print(f"{name:<42} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['rps']:>11.0f}")
    out = ROOT / "build" / "bench" / "edge.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"n": args.n, "concurrency": args.concurrency, "cpus": os.cpu_count(), "results": rows}, indent=2
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
