"""Prometheus metrics of the inference engine, labelled by served model name, and the span events
of one request.

The embedded engine records them on its own thread; over Triton the engine runs in Triton's
process, so the Triton backend records the same names as the service sees its requests.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.inference.generation import Delta

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
        self.execution_provider = Gauge(
            "llmesh_inference_execution_provider",
            "1 for each ONNX Runtime execution provider the model's session runs on.",
            ["model", "provider"],
            registry=registry,
        )
        self.execution_provider_missing = Gauge(
            "llmesh_inference_execution_provider_missing",
            "1 for each requested execution provider the model's session does not run on.",
            ["model", "provider"],
            registry=registry,
        )

    def providers(self, model: str, active: tuple[str, ...], missing: tuple[str, ...]) -> None:
        """Record which execution providers a model's session runs on and which it lacks."""
        for provider in active:
            self.execution_provider.labels(model, provider).set(1)
        for provider in missing:
            self.execution_provider_missing.labels(model, provider).set(1)


class RequestSpan:
    """One request's queue wait, prefill and decode steps as events on the current span.

    ``extra`` attributes go on the queue_wait and prefill events (Triton marks its own times)."""

    def __init__(self, model: str) -> None:
        self.span = trace.get_current_span()
        self.span.set_attribute("llmesh.model", model)
        self._submitted_ns = time.time_ns()  # made right after the request was submitted
        self._steps = self._batch_max = self._batch_sum = 0

    def record(self, delta: Delta, extra: dict[str, AttributeValue] | None = None) -> None:
        """Add the events one delta stands for.

        The first delta says how long the request queued (from submission) and how long its
        prefill took (`ttft_ms`, from admission to the first token); those two events are stamped
        at the moments they describe (the end of the wait, the end of the prefill), not when the
        delta reached this span.
        """
        if delta.first:
            admitted = self._submitted_ns + int(delta.queue_ms * 1e6)
            first_token = admitted + int(delta.ttft_ms * 1e6)
            self.span.add_event("queue_wait", {"llmesh.queue_ms": delta.queue_ms, **(extra or {})}, admitted)
            self.span.add_event(
                "prefill",
                {"llmesh.ttft_ms": delta.ttft_ms, "llmesh.prefix_reused_tokens": delta.cached_tokens,
                 **(extra or {})},
                first_token,
            )  # fmt: skip
        elif delta.token_ids:
            self._steps, self._batch_sum = self._steps + 1, self._batch_sum + delta.batch_size
            self._batch_max = max(self._batch_max, delta.batch_size)
            step = {"llmesh.batch_size": delta.batch_size, "llmesh.tokens": len(delta.token_ids)}
            self.span.add_event("decode_step", step)
        if delta.finish_reason is not None:
            usage = delta.usage
            self.span.add_event(
                "decode",
                {
                    "llmesh.completion_tokens": usage.completion_tokens if usage else 0,
                    "llmesh.finish_reason": delta.finish_reason.value,
                    "llmesh.decode_steps": self._steps,
                    "llmesh.batch_size_max": self._batch_max,
                    "llmesh.batch_size_mean": round(self._batch_sum / self._steps, 2) if self._steps else 0.0,
                },
            )
