"""Wires the cache service: Redis store, semantic index, servicer, health monitor. No side effects on build.

Health: "" (the process) reports SERVING once the embedder is loaded and stays SERVING while
Redis is down, because every Lookup still answers (a miss) within its deadline. The service
name `llmesh.cache.v1.CacheService` follows Redis reachability (checked every
`health_interval_s`), so a caller can skip the cache hop entirely while it is degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1 import health_pb2
from llmesh.cache.v1 import cache_service_pb2 as pb
from llmesh.cache.v1 import cache_service_pb2_grpc as pb_grpc

from libs.embedding import EMBEDDING_DIM, SentenceEmbedder
from libs.runtime.server import GrpcService
from services.cache.cache import CachePolicy, ResponseCache
from services.cache.redis_store import BackendError, RedisStore
from services.cache.semantic import SemanticIndex
from services.cache.servicer import CacheServicer
from services.cache.settings import CacheSettings

NAME = "cache"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CacheService"].full_name
log = logging.getLogger("llmesh.cache")


def policy_from(settings: CacheSettings) -> CachePolicy:
    """The cache policy a settings object describes."""
    return CachePolicy(
        default_ttl_s=settings.default_ttl_s,
        ttl_overrides=dict(settings.ttl_overrides),
        semantic_threshold=settings.semantic_threshold,
        threshold_overrides=dict(settings.semantic_thresholds),
        lease_ms=settings.lease_ms,
        max_entries_per_namespace=settings.max_entries_per_namespace,
    )


def build_server(settings: CacheSettings) -> GrpcService:
    """The cache service, ready to start: the embedder loads and Redis is probed in start hooks."""
    store = RedisStore.from_url(
        settings.redis_url,
        timeout_s=settings.redis_timeout_ms / 1000,
        slow_timeout_s=settings.redis_slow_timeout_s,
        max_connections=settings.redis_max_connections,
    )
    index = (
        SemanticIndex(
            store,
            EMBEDDING_DIM,
            settings.max_entries_per_namespace,
            settings.max_namespaces,
            reload_timeout_s=settings.redis_slow_timeout_s,
        )
        if settings.semantic_enabled
        else None
    )
    cache = ResponseCache(store, index, None, policy_from(settings))
    service = GrpcService(NAME, settings)
    service.add_servicer(pb_grpc.add_CacheServiceServicer_to_server, CacheServicer(cache), SERVICE_NAME)
    monitor: list[asyncio.Task[None]] = []

    async def watch_backend() -> None:
        last: bool | None = None
        while True:
            await asyncio.sleep(settings.health_interval_s)
            up = await cache.check_backend(settings.redis_timeout_ms / 1000)
            if up != last:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if up
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await service.health.set(SERVICE_NAME, status)
                log.info("redis %s", "reachable" if up else "unreachable: serving misses only")
                last = up

    async def start() -> None:
        if index is not None:
            embedder = await asyncio.to_thread(
                SentenceEmbedder.load, settings.embedding_model_dir, settings.embedding_threads
            )
            cache.attach_embedder(embedder)
        if not await cache.check_backend(settings.redis_timeout_ms / 1000):
            log.warning("redis at %s is unreachable at start: lookups answer misses", settings.redis_url)
        else:
            try:
                await store.warm(min(settings.redis_warm_connections, settings.redis_max_connections), 5.0)
            except BackendError as err:
                log.warning("could not pre-open redis connections (they open on demand): %s", err)
        monitor.append(asyncio.create_task(watch_backend(), name="cache-redis-health"))

    async def stop() -> None:
        for task in monitor:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await cache.drain()
        await store.close()

    service.on_start(start)
    service.on_stop(stop)
    return service
