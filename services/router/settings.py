"""Router service settings (environment variables LLMESH_ROUTER_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from libs.runtime.channels import grpc_target
from libs.runtime.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Settings of the router service."""

    model_config = SettingsConfigDict(env_prefix="LLMESH_ROUTER_", extra="ignore", frozen=True)

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(9101, ge=-1, le=65535, description="Prometheus port; 0 = free port, -1 = off.")

    tokenizer_addr: str = Field(
        "127.0.0.1:50052",
        description="Tokenizer service address (host:port); several IP replicas comma-separated, or one DNS "
        "name that resolves to every replica: calls go round robin.",
    )
    safety_addr: str = Field(
        "127.0.0.1:50053", description="Safety service address(es), as for tokenizer_addr."
    )
    cache_addr: str = Field(
        "127.0.0.1:50054", description="Cache service address(es), as for tokenizer_addr."
    )
    inference_addrs: str = Field(
        "127.0.0.1:50055",
        description="Inference replicas, comma-separated host:port list. `dns:///name:port` stands for "
        "every address the name resolves to (a headless Service: one replica per pod), re-resolved every "
        "inference_resolve_s.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for API keys, rate limits, usage, budgets and shared breaker state.",
    )
    registry_file: Path = Field(
        Path("services/router/models.yaml"), description="Model registry (YAML), see the README."
    )

    tokenizer_timeout_s: float = Field(1.0, gt=0, description="Deadline of one tokenizer call, seconds.")
    safety_timeout_s: float = Field(2.0, gt=0, description="Deadline of input screening, seconds.")
    cache_timeout_s: float = Field(
        0.3, gt=0, description="Deadline of a cache lookup, seconds; a slower cache counts as a miss."
    )
    cache_wait_ms: int = Field(
        10_000,
        ge=0,
        description="How long a cacheable request waits for an identical one already generating (single "
        "flight: N concurrent identical misses run inference once); 0 = never wait. Matches the cache's "
        "lease (LLMESH_CACHE_LEASE_MS), after which a waiter takes over.",
    )
    cache_semantic: bool = Field(
        True,
        description="Ask the cache for semantic hits (a paraphrase under the same system prompt and earlier "
        "turns gets a cached answer) and give it the prompt text to index; off = exact hits only. Prompts "
        "safety redacted or could not screen always use the exact cache only.",
    )
    first_token_timeout_s: float = Field(
        10.0, gt=0, description="Deadline for an inference attempt to produce its first token, seconds."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Upper bound on a whole request when the caller sets no tighter deadline."
    )
    default_max_tokens: int = Field(
        256,
        gt=0,
        description="max_tokens used when a request does not set one (also prices the budget hold).",
    )

    retry_budget_ratio: float = Field(
        0.2, ge=0, le=1, description="Retries allowed as a fraction of requests (0.2 = at most 20% extra)."
    )
    retry_budget_min: float = Field(
        10.0, ge=0, description="Retries always available, so a quiet router can still retry."
    )
    max_attempts: int = Field(
        4, ge=1, description="Most inference attempts per request, retries and fallbacks together."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures of a backend that open its circuit breaker."
    )
    breaker_open_s: float = Field(
        5.0, gt=0, description="Seconds an open breaker rejects calls before it lets a probe through."
    )
    breaker_probe_s: float = Field(
        5.0, gt=0, description="Seconds a half-open probe may take before another probe is allowed."
    )
    load_poll_s: float = Field(
        0.5, gt=0, description="How often each inference replica's GetLoad is polled, seconds."
    )
    inference_resolve_s: float = Field(
        5.0,
        gt=0,
        description="How often `dns:///` inference addresses are resolved again, seconds: new pods join, "
        "vanished ones retire once their running calls finish.",
    )

    max_inflight: int = Field(
        256, gt=0, description="Requests served at once; more are shed with RESOURCE_EXHAUSTED."
    )
    safety_fail_mode: str = Field(
        "closed",
        description='When safety is down: "closed" refuses (UNAVAILABLE), "open" proceeds with a log line '
        "and a metric. A key's own safety_fail_mode wins, then its tenant's (`llmesh tenants set`).",
    )
    stream_chunk_chars: int = Field(
        24, gt=0, description="Characters per chunk when a cached answer is replayed as a stream."
    )

    @field_validator("safety_fail_mode")
    @classmethod
    def _fail_mode(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("open", "closed"):
            raise ValueError('must be "open" or "closed"')
        return value

    @field_validator("tokenizer_addr", "safety_addr", "cache_addr")
    @classmethod
    def _service_addr(cls, value: str) -> str:
        grpc_target(value)
        return value

    @field_validator("inference_addrs")
    @classmethod
    def _addrs(cls, value: str) -> str:
        if not [a for a in value.split(",") if a.strip()]:
            raise ValueError("name at least one inference replica (host:port)")
        return value

    @property
    def inference_targets(self) -> list[str]:
        """The inference replica addresses as a list."""
        return [a.strip() for a in self.inference_addrs.split(",") if a.strip()]
