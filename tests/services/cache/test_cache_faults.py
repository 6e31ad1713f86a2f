"""Redis failures: lookups miss within their deadline, stores fail soft, health follows Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmesh.cache.v1 import cache_service_pb2 as pb
from prometheus_client import REGISTRY

from libs.testing.redis_server import RedisServer
from services.cache.keys import Namespace
from services.cache.redis_store import RedisStore
from services.cache.server import SERVICE_NAME

from .conftest import ServerFactory
from .test_cache_service import key, response, tenant


async def _health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_redis_killed_mid_test(make_server: ServerFactory, tmp_path: Path) -> None:
    redis = RedisServer(log_dir=tmp_path).start()
    try:
        async with make_server(redis.url, health_interval_s=0.1, redis_timeout_ms=50) as (service, stub):
            k = key(tenant(), [1, 2], "Why is the sky blue?")
            await stub.Store(pb.StoreRequest(key=k, response=response("Rayleigh")))
            assert (await stub.Lookup(pb.LookupRequest(key=k))).hit
            redis.kill()
            for semantic in (False, True):
                result = await stub.Lookup(
                    pb.LookupRequest(key=k, semantic=semantic, wait_ms=2000), timeout=1.0
                )
                assert not result.hit and result.skipped_reason == "backend_unavailable"
            assert not (await stub.Store(pb.StoreRequest(key=k, response=response("x")))).stored
            stats = await stub.GetStats(pb.GetStatsRequest())
            assert not stats.backend_up and stats.backend_errors >= 2
            serving = health_pb2.HealthCheckResponse.SERVING

            async def degraded() -> bool:
                return await _health(service.port, SERVICE_NAME) != serving

            await _until(degraded)
            assert await _health(service.port, "") == serving
            redis.start()  # same port, empty data

            async def recovered() -> bool:
                return await _health(service.port, SERVICE_NAME) == serving

            await _until(recovered)
            assert not (await stub.Lookup(pb.LookupRequest(key=k))).hit
            assert (await stub.Store(pb.StoreRequest(key=k, response=response("again")))).stored
            assert (await stub.Lookup(pb.LookupRequest(key=k))).response.text == "again"
    finally:
        redis.stop()


async def test_slow_redis_misses_within_deadline(make_server: ServerFactory, tmp_path: Path) -> None:
    redis = RedisServer(log_dir=tmp_path).start()
    try:
        async with make_server(redis.url, redis_timeout_ms=50) as (_, stub):
            k = key(tenant(), [3])
            await stub.Store(pb.StoreRequest(key=k, response=response("v")))
            assert redis.process is not None
            redis.process.signal(signal.SIGSTOP)  # connected but never answers
            try:
                result = await stub.Lookup(pb.LookupRequest(key=k), timeout=1.0)
                assert not result.hit and result.skipped_reason == "backend_unavailable"
            finally:
                redis.process.signal(signal.SIGCONT)
    finally:
        redis.stop()


async def test_expired_lease_lets_a_waiter_take_over(redis: RedisServer, make_server: ServerFactory) -> None:
    async with make_server(redis.url, lease_ms=200) as (_, stub):
        k = key(tenant(), [4, 2])
        first = await stub.Lookup(pb.LookupRequest(key=k))
        assert first.lease
        waiter = await stub.Lookup(pb.LookupRequest(key=k, wait_ms=3000))
        assert waiter.lease and waiter.lease != first.lease and not waiter.hit
        # The stale leader's Store still writes, but cannot release the new holder's lease.
        assert (await stub.Store(pb.StoreRequest(key=k, response=response("late"), lease=first.lease))).stored
        assert (await stub.Lookup(pb.LookupRequest(key=k))).hit


async def test_lease_is_granted_again_to_the_token_that_holds_it(redis: RedisServer) -> None:
    """A lookup retried after a timeout that did run on Redis gets its own lease back, not a wait."""
    store = RedisStore.from_url(redis.url, timeout_s=1.0, slow_timeout_s=1.0)
    try:
        ns = Namespace(tenant(), "smollm2", "1")
        assert await store.get_or_lease(ns, "h1", "token-a", 5000) == (None, True)
        assert await store.get_or_lease(ns, "h1", "token-a", 5000) == (None, True)
        assert await store.get_or_lease(ns, "h1", "token-b", 5000) == (None, False)
    finally:
        await store.close()


def _retried() -> float:
    return REGISTRY.get_sample_value("llmesh_cache_backend_errors_total", {"op": "lookup_retried"}) or 0.0


async def test_waiter_keeps_waiting_through_a_stalled_redis(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    """Single flight survives one slow Redis round trip: the waiter still gets the leader's answer."""
    redis = RedisServer(log_dir=tmp_path).start()
    try:
        async with make_server(redis.url, redis_timeout_ms=50) as (_, stub):
            k = key(tenant(), [8, 1, 8])
            leader = await stub.Lookup(pb.LookupRequest(key=k))
            assert leader.lease
            waiter = asyncio.ensure_future(stub.Lookup(pb.LookupRequest(key=k, wait_ms=10_000), timeout=15))
            await asyncio.sleep(0.2)  # the waiter is polling
            retried = _retried()
            assert redis.process is not None
            redis.process.signal(signal.SIGSTOP)
            await asyncio.sleep(0.15)  # at least one poll times out
            redis.process.signal(signal.SIGCONT)
            await stub.Store(pb.StoreRequest(key=k, response=response("answer"), lease=leader.lease))
            result = await waiter
            assert result.hit and result.response.text == "answer", result
            assert _retried() > retried
    finally:
        redis.stop()


async def test_a_restarted_redis_costs_no_call(tmp_path: Path, make_server: ServerFactory) -> None:
    """Every pooled connection is broken after Redis restarts; each call still succeeds (one
    immediate reconnect), instead of the first use of each stale connection failing."""
    redis = RedisServer(log_dir=tmp_path).start()
    try:
        async with make_server(redis.url, health_interval_s=0.1, redis_timeout_ms=500) as (service, stub):
            t = tenant()
            await asyncio.gather(
                *[
                    stub.Store(pb.StoreRequest(key=key(t, [i]), response=response("a")), timeout=10)
                    for i in range(16)
                ]
            )
            redis.kill()
            redis.start()  # same port, empty data: the pool's connections are all dead

            async def recovered() -> bool:
                return await _health(service.port, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING

            await _until(recovered)
            stored = await asyncio.gather(
                *[
                    stub.Store(pb.StoreRequest(key=key(t, [100 + i]), response=response("b")), timeout=10)
                    for i in range(16)
                ]
            )
            assert all(r.stored for r in stored), [r.stored for r in stored]
    finally:
        redis.stop()
