"""Cache service settings (environment variables LLMESH_CACHE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.settings import ServiceSettings


class CacheSettings(ServiceSettings):
    """Settings of the cache service."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_CACHE_", extra="ignore", frozen=True)

    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(9104, ge=-1, le=65535, description="Prometheus port; 0 = free port, -1 = off.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding entries and vectors.")
    redis_timeout_ms: int = Field(
        50, gt=0, description="Budget of one Redis round trip on the Lookup/Store path; slower = miss."
    )
    redis_slow_timeout_s: float = Field(
        10.0, gt=0, description="Budget of bulk reads (semantic index reload) and socket reads."
    )
    redis_max_connections: int = Field(64, gt=0, description="Size of the Redis connection pool.")
    redis_warm_connections: int = Field(
        16, ge=0, description="Pool connections opened at start, so a first burst of lookups pays no connect."
    )
    default_ttl_s: int = Field(3600, gt=0, description="Lifetime of an entry when Store sets no ttl_s.")
    ttl_overrides: dict[str, int] = Field(
        default_factory=dict,
        description='TTL per "tenant" or "tenant/model", as JSON, e.g. {"acme/smollm2": 600}.',
    )
    semantic_threshold: float = Field(
        0.82, gt=0, le=1, description="Default cosine similarity a semantic hit needs (see README)."
    )
    semantic_thresholds: dict[str, float] = Field(
        default_factory=dict, description='Threshold per "tenant" or "tenant/model", as JSON.'
    )
    semantic_enabled: bool = Field(True, description="Load the embedder and serve semantic lookups.")
    embedding_model_dir: Path = Field(
        Path("build/models/minilm"),
        description="Embedder folder from `python -m libs.embedding.build`.",
    )
    embedding_threads: int = Field(1, gt=0, description="ONNX Runtime threads of the embedder.")
    max_entries_per_namespace: int = Field(
        200_000, gt=0, description="Vectors kept per tenant/model/version; the oldest are trimmed."
    )
    max_namespaces: int = Field(256, gt=0, description="Namespace mirrors kept in memory (LRU).")
    lease_ms: int = Field(
        10_000, gt=0, description="Single-flight lease lifetime; a crashed leader's lease expires then."
    )
    health_interval_s: float = Field(1.0, gt=0, description="How often Redis reachability is checked.")
