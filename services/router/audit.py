"""One audit event per request on the `llmesh.audit` logger, and the request counters."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import trace

from libs.keys import KeyRecord
from services.router import metrics as m
from services.router.generation import Route

audit_log = logging.getLogger("llmesh.audit")
_tracer = trace.get_tracer("llmesh.router")
# Steps that run once per output chunk: timed in the audit event, not one span each.
_UNTRACED_STEPS = frozenset({"output_safety"})


@dataclass
class RequestAudit:
    """What the audit event reports about one request."""

    key: KeyRecord
    request_id: str
    user: str
    steps: dict[str, float] = field(default_factory=dict)
    status: str = "OK"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    findings: list[str] = field(default_factory=list)
    limited_tokens: int = 0
    settled: bool = False
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            if name in _UNTRACED_STEPS:
                yield
            else:
                with _tracer.start_as_current_span(f"router.{name}"):
                    yield
        finally:
            elapsed = time.perf_counter() - t0
            self.steps[name] = self.steps.get(name, 0.0) + elapsed
            m.STEP_LATENCY.labels(name).observe(elapsed)


def emit(audit: RequestAudit, route: Route) -> None:
    """Count the request and write its audit event (never the prompt or the key)."""
    m.REQUESTS.labels(audit.status, route.model).inc()
    span = trace.get_current_span()
    span.set_attributes(
        {
            "llmesh.tenant": audit.key.tenant,
            "llmesh.model": route.model,
            "llmesh.prompt_tokens": audit.prompt_tokens,
            "llmesh.completion_tokens": audit.completion_tokens,
            "llmesh.cache.result": route.cache,
            "llmesh.safety.findings": sorted(set(audit.findings)),
            "llmesh.status": audit.status,
        }
    )
    audit_log.info(
        "request",
        extra={
            "fields": {
                "event": "llmesh.audit",
                "request_id": audit.request_id,
                "tenant": audit.key.tenant,
                "key_id": audit.key.key_id,
                "user": audit.user,
                "status": audit.status,
                "model": route.model,
                "route_reason": route.reason,
                "attempts": route.attempts,
                "cache": route.cache,
                "safety": route.safety,
                "output_safety": route.output_safety,
                "findings": sorted(set(audit.findings)),
                "prompt_tokens": audit.prompt_tokens,
                "completion_tokens": audit.completion_tokens,
                "cost_usd": round(route.cost_usd, 8),
                "latency_ms": round((time.perf_counter() - audit.started) * 1000, 2),
                "steps_ms": {k: round(v * 1000, 2) for k, v in audit.steps.items()},
            }
        },
    )
