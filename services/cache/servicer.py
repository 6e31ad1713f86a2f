"""CacheService: a thin adapter between the proto contract and `ResponseCache`."""

from __future__ import annotations

import grpc
from llmesh.cache.v1 import cache_service_pb2 as pb
from llmesh.cache.v1 import cache_service_pb2_grpc as pb_grpc
from llmesh.common.v1 import generation_pb2
from opentelemetry import trace

from services.cache.cache import ResponseCache
from services.cache.codec import StoredResponse
from services.cache.keys import CacheKey, CacheMode, Sampling


def _mode(value: int) -> CacheMode:
    return CacheMode(value) if value in (1, 2, 3) else CacheMode.AUTO


def _key(key: pb.CacheKey) -> CacheKey:
    s = key.sampling
    sampling = Sampling(
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        top_k=s.top_k if s.HasField("top_k") else None,
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
    )
    return CacheKey(
        tenant=key.tenant,
        model=key.model,
        model_version=key.model_version,
        sampling=sampling,
        prompt_token_ids=tuple(key.prompt_token_ids),
        semantic_text=key.semantic_text,
        context_digest=key.context_digest,
    )


def _to_proto(entry: StoredResponse) -> pb.CachedResponse:
    return pb.CachedResponse(
        text=entry.text,
        finish_reason=entry.finish_reason,  # type: ignore[arg-type]
        usage=generation_pb2.Usage(
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            total_tokens=entry.total_tokens,
        ),
        created_unix=entry.created_unix,
    )


def _from_proto(response: pb.CachedResponse) -> StoredResponse:
    return StoredResponse(
        text=response.text,
        finish_reason=int(response.finish_reason),
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        total_tokens=response.usage.total_tokens,
        created_unix=response.created_unix,
    )


class CacheServicer(pb_grpc.CacheServiceServicer):
    """Serves a `ResponseCache` over gRPC."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        result = await self.cache.lookup(
            _key(request.key),
            mode=_mode(request.mode),
            semantic=request.semantic,
            wait_ms=request.wait_ms,
            similarity_threshold=request.similarity_threshold,
            deadline_s=context.time_remaining(),
        )
        span = trace.get_current_span()
        span.set_attribute("llmesh.model", request.key.model)
        span.set_attribute("llmesh.cache.hit", result.hit)
        span.set_attribute("llmesh.cache.kind", result.kind.name.lower() if result.hit else "miss")
        if result.similarity:
            span.set_attribute("llmesh.cache.similarity", round(result.similarity, 4))
        if result.skipped_reason:
            span.set_attribute("llmesh.cache.skipped", result.skipped_reason)
        return pb.LookupResponse(
            hit=result.hit,
            kind=int(result.kind),  # type: ignore[arg-type]
            response=_to_proto(result.response) if result.response else None,
            similarity=result.similarity,
            entry_id=result.entry_id,
            lease=result.lease,
            skipped_reason=result.skipped_reason,
        )

    async def Store(self, request: pb.StoreRequest, context: grpc.aio.ServicerContext) -> pb.StoreResponse:
        result = await self.cache.store(
            _key(request.key),
            _from_proto(request.response),
            mode=_mode(request.mode),
            lease=request.lease,
            ttl_s=request.ttl_s,
        )
        trace.get_current_span().set_attribute("llmesh.cache.stored", result.stored)
        return pb.StoreResponse(stored=result.stored, entry_id=result.entry_id)

    async def Invalidate(
        self, request: pb.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvalidateResponse:
        deleted = await self.cache.invalidate(request.entry_id, request.tenant, request.model)
        return pb.InvalidateResponse(deleted=deleted)

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        s = self.cache.stats
        return pb.GetStatsResponse(
            exact_hits=s.exact_hits,
            semantic_hits=s.semantic_hits,
            misses=s.misses,
            stores=s.stores,
            backend_errors=s.backend_errors,
            backend_up=await self.cache.check_backend(),
        )
