"""Prometheus metrics of the inference engine, labelled by served model name."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 12, 16, 24, 32, 64)


class EngineMetrics:
    """Every engine of a process shares one instance (metrics register once per registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.ttft = Histogram(
            "llmesh_inference_time_to_first_token_seconds",
            "Submission to first generated token, queue wait included.",
            ["model"],
            buckets=_LATENCY_S,
            registry=registry,
        )
        self.inter_token = Histogram(
            "llmesh_inference_inter_token_seconds",
            "Time between consecutive tokens of one sequence.",
            ["model"],
            buckets=_LATENCY_S,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "llmesh_inference_queue_wait_seconds",
            "Time a request waited for a batch slot.",
            ["model"],
            buckets=_LATENCY_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "llmesh_inference_batch_size",
            "Sequences decoded together in one step.",
            ["model"],
            buckets=_BATCH,
            registry=registry,
        )
        self.tokens = Counter(
            "llmesh_inference_generated_tokens",
            "Tokens generated.",
            ["model"],
            registry=registry,
        )
        self.finished = Counter(
            "llmesh_inference_requests_finished",
            "Requests finished, by finish reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "llmesh_inference_requests_rejected",
            "Requests refused because the admission queue was full.",
            ["model"],
            registry=registry,
        )
        self.running = Gauge(
            "llmesh_inference_running_sequences",
            "Sequences in the running batch.",
            ["model"],
            registry=registry,
        )
        self.prefix_cache_hits = Counter(
            "llmesh_inference_prefix_cache_hits",
            "Prefills that reused a cached prompt prefix.",
            ["model"],
            registry=registry,
        )
        self.prefix_cache_misses = Counter(
            "llmesh_inference_prefix_cache_misses",
            "Prefills that found no cached prompt prefix (cache on).",
            ["model"],
            registry=registry,
        )
        self.prefix_reused_tokens = Counter(
            "llmesh_inference_prefix_reused_tokens",
            "Prompt tokens whose KV was copied from the prefix cache instead of prefilled.",
            ["model"],
            registry=registry,
        )
        self.prefix_cache_tokens = Gauge(
            "llmesh_inference_prefix_cache_tokens",
            "Prompt-prefix tokens held in the prefix cache.",
            ["model"],
            registry=registry,
        )
        self.queued = Gauge(
            "llmesh_inference_queued_requests", "Requests waiting for a slot.", ["model"], registry=registry
        )
