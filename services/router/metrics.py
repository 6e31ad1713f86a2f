"""Prometheus metrics of the router: outcomes, tokens and cost, step latency, breakers, TTFT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.runtime.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "llmesh_router_requests_total", "Requests by final status code and model.", ["status", "model"]
)
TOKENS = Counter(
    "llmesh_router_tokens_total", "Tokens billed, by tenant, model and kind.", ["tenant", "model", "kind"]
)
COST = Counter("llmesh_router_cost_usd_total", "US dollars billed, by tenant and model.", ["tenant", "model"])
STEP_LATENCY = Histogram(
    "llmesh_router_step_seconds", "Latency of each pipeline step.", ["step"], buckets=LATENCY_BUCKETS
)
TTFT = Histogram(
    "llmesh_router_time_to_first_token_seconds",
    "From receiving a request to its first token leaving the router.",
    ["model", "cache"],
    buckets=LATENCY_BUCKETS,
)
BREAKER_STATE = Gauge(
    "llmesh_router_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["backend"]
)
BREAKER_STORE_FALLBACK = Counter(
    "llmesh_router_breaker_store_fallback_total", "Breaker calls served from local state (Redis down)."
)
ATTEMPTS = Counter(
    "llmesh_router_attempts_total",
    "Inference attempts by kind (first, retry, fallback) and outcome.",
    ["kind", "outcome"],
)
RETRY_REFUSED = Counter("llmesh_router_retry_budget_exhausted_total", "Retries refused by the retry budget.")
CACHE = Counter("llmesh_router_cache_total", "Cache outcomes: hit, miss, bypass, error.", ["result"])
SAFETY_FAIL_OPEN = Counter(
    "llmesh_router_safety_fail_open_total",
    "Requests that went on unscreened because safety was down and the key fails open.",
    ["direction"],
)
SAFETY_BLOCKED = Counter("llmesh_router_safety_blocked_total", "Requests blocked by safety.", ["direction"])
SHED = Counter("llmesh_router_shed_total", "Requests refused because MAX_INFLIGHT was reached.")
INFLIGHT = Gauge("llmesh_router_inflight", "Generation requests being served now.")
REPLICA_LOAD = Gauge(
    "llmesh_router_replica_load",
    "Last load reported by an inference replica (running + queued).",
    ["replica"],
)
