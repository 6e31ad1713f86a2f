"""Wires the router service: registry, clients, breakers, budgets, pipeline, lifecycle hooks.

`build_server` only reads the registry file (a bad file fails at once, naming the problem);
channels, Redis connections and the replica poller are created in the start hook. Health turns
SERVING once Redis answers and stays in step with Redis reachability afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from llmesh.router.v1 import router_service_pb2 as pb
from llmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from redis.exceptions import RedisError

from libs.keys import KeyStore
from libs.runtime.errors import Unavailable
from libs.runtime.server import GrpcService
from libs.runtime.tls import channel_credentials
from services.router.accounting import Accounting
from services.router.backends import Backend
from services.router.breaker import BreakerConfig, Breakers, RedisBreakerStore
from services.router.clients import CacheClient, SafetyClient, TokenizerClient
from services.router.dispatch import Dispatcher
from services.router.inference_client import InferenceReplicas
from services.router.limits import RateLimiter
from services.router.metrics import BREAKER_STATE, BREAKER_STORE_FALLBACK
from services.router.openai_backend import OpenAIBackend
from services.router.pipeline import Pipeline, PipelineConfig
from services.router.registry import INFERENCE_BACKENDS, ModelRegistry
from services.router.retry_budget import RetryBudget
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings

NAME = "router"
log = logging.getLogger(__name__)
REDIS_CHECK_S = 2.0


class _Starting:
    """Stands in for the pipeline until the start hook has built it."""

    def __getattr__(self, name: str) -> object:
        raise Unavailable("the router is starting; retry shortly", reason="STARTING")


def build_server(settings: RouterSettings) -> GrpcService:
    """The router service, ready to start."""
    registry = ModelRegistry.load(settings.registry_file)
    service = GrpcService(NAME, settings)
    servicer = RouterServicer(
        _Starting(),  # type: ignore[arg-type]
        registry,
        _Starting(),  # type: ignore[arg-type]
        _Starting(),  # type: ignore[arg-type]
        max_inflight=settings.max_inflight,
        request_timeout_s=settings.request_timeout_s,
    )
    service.add_servicer(
        pb_grpc.add_RouterServiceServicer_to_server,
        servicer,
        pb.DESCRIPTOR.services_by_name["RouterService"].full_name,
    )
    closers: list[object] = []
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        redis = aioredis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=1.0
        )
        try:
            await redis.ping()
        except RedisError as exc:
            raise RuntimeError(
                f"router: Redis at {settings.redis_url} does not answer ({exc}); "
                "start it or set LLMESH_ROUTER_REDIS_URL"
            ) from None
        keys = KeyStore.from_url(settings.redis_url)
        creds = channel_credentials(settings)
        tokenizer = TokenizerClient(settings.tokenizer_addr, creds)
        safety = SafetyClient(settings.safety_addr, creds)
        cache = CacheClient(settings.cache_addr, creds)
        replicas = InferenceReplicas(
            [*settings.inference_targets, *registry.replica_addrs()],
            poll_s=settings.load_poll_s,
            resolve_s=settings.inference_resolve_s,
            credentials=creds,
        )
        openai = OpenAIBackend()
        await replicas.start()
        breakers = Breakers(
            RedisBreakerStore(redis),
            BreakerConfig(
                failures=settings.breaker_failures,
                open_s=settings.breaker_open_s,
                probe_s=settings.breaker_probe_s,
            ),
            on_state=lambda backend, state: BREAKER_STATE.labels(backend).set(int(state)),
            on_store_error=BREAKER_STORE_FALLBACK.inc,
            store_errors=(RedisError,),
        )
        backends: dict[str, Backend] = {name: replicas for name in INFERENCE_BACKENDS}
        backends["openai"] = openai
        accounting = Accounting(redis)
        pipeline = Pipeline(
            registry=registry,
            tokenizer=tokenizer,
            safety=safety,
            cache=cache,
            backends=backends,
            dispatcher=Dispatcher(
                backends,
                breakers,
                RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min),
                first_token_timeout_s=settings.first_token_timeout_s,
                max_attempts=settings.max_attempts,
            ),
            accounting=accounting,
            limiter=RateLimiter(redis),
            config=PipelineConfig(
                tokenizer_timeout_s=settings.tokenizer_timeout_s,
                safety_timeout_s=settings.safety_timeout_s,
                cache_timeout_s=settings.cache_timeout_s,
                cache_wait_ms=settings.cache_wait_ms,
                cache_semantic=settings.cache_semantic,
                default_max_tokens=settings.default_max_tokens,
                stream_chunk_chars=settings.stream_chunk_chars,
                safety_fail_mode=settings.safety_fail_mode,
            ),
        )
        servicer.pipeline, servicer.keys, servicer.accounting = pipeline, keys, accounting
        closers.extend([pipeline, replicas, openai, tokenizer, safety, cache, keys, redis])
        tasks.append(asyncio.create_task(_watch_redis(service, redis), name="router-redis-health"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for closer in closers:
            if isinstance(closer, Pipeline):
                await closer.drain()
            elif isinstance(closer, InferenceReplicas | OpenAIBackend):
                await closer.stop()
            elif isinstance(closer, aioredis.Redis):
                await closer.aclose()
            else:
                await closer.close()  # type: ignore[attr-defined]

    service.on_start(start)
    service.on_stop(stop)
    return service


async def _watch_redis(service: GrpcService, redis: aioredis.Redis) -> None:
    """Report NOT_SERVING while Redis (keys, limits, budgets) does not answer."""
    serving = True
    while True:
        await asyncio.sleep(REDIS_CHECK_S)
        try:
            await redis.ping()
            ok = True
        except RedisError as exc:
            ok = False
            if serving:
                log.error("Redis unreachable; reporting NOT_SERVING", extra={"fields": {"error": repr(exc)}})
        if ok != serving:
            serving = ok
            await service.set_serving(ok)
