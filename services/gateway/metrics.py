"""Prometheus metrics of the gateway's HTTP side (the router call is counted by the router)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.runtime.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter(
    "llmesh_gateway_http_requests_total",
    "HTTP requests answered by the gateway, by route, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "llmesh_gateway_http_request_seconds",
    "Time from receiving a request to the end of its response (whole stream for SSE).",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("llmesh_gateway_http_in_flight", "HTTP requests being served now.", ["route"])
STREAM_FIRST_CHUNK = Histogram(
    "llmesh_gateway_stream_first_chunk_seconds",
    "Time from receiving a streaming request to sending its first chunk.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
ROUTER_ERRORS = Counter(
    "llmesh_gateway_router_errors_total",
    "Router calls that failed, by gRPC status code.",
    ["code"],
)
