"""Prometheus metrics shared by every service: per-RPC counters and latency, and the endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_HANDLED = Counter(
    "llmesh_grpc_server_handled_total",
    "RPCs completed by the server, by method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "llmesh_grpc_server_handling_seconds",
    "Time from receiving an RPC to its completion.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge("llmesh_grpc_server_in_flight", "RPCs being served now.", ["service", "method"])
SERVING = Gauge("llmesh_serving", "1 while the service reports SERVING on its health check.", ["service"])


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics on host:port (0 = any free port); returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
