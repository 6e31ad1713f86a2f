"""Audit trail of screening decisions: one JSON log line per finding, and a Prometheus counter.

Lines go to the `llmesh.audit` logger with the finding's type, action, rule, score and span, the
tenant, request id and trace id. The matched value is never logged.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from prometheus_client import Counter

from services.safety.findings import Detection
from services.safety.policy import Action, Direction

AUDIT_LOGGER = "llmesh.audit"

ACTIONS = Counter(
    "llmesh_safety_actions_total",
    "Screening decisions, by finding type, direction and action.",
    ["type", "direction", "action"],
)
REQUESTS = Counter(
    "llmesh_safety_requests_total",
    "Screened requests (input messages, texts, output streams), by direction and overall action.",
    ["direction", "action"],
)


def _trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class AuditLog:
    """Records decisions for one tenant and request."""

    def __init__(self, tenant: str, request_id: str, direction: Direction) -> None:
        self.tenant = tenant
        self.request_id = request_id
        self.direction = direction
        self._log = logging.getLogger(AUDIT_LOGGER)
        self._trace_id = _trace_id()
        self._types: set[str] = set()

    def finding(self, d: Detection, action: Action, message_index: int, placeholder: str = "") -> None:
        ACTIONS.labels(d.type, self.direction.value, action.name.lower()).inc()
        self._types.add(d.type)
        trace.get_current_span().add_event(
            "safety.finding",
            {
                "llmesh.safety.type": d.type,
                "llmesh.safety.action": action.name.lower(),
                "llmesh.safety.rule": d.rule,
            },
        )
        self._log.info(
            "safety decision",
            extra={
                "fields": {
                    "event": "safety.finding",
                    "type": d.type,
                    "action": action.name.lower(),
                    "rule": d.rule,
                    "score": round(d.score, 4),
                    "direction": self.direction.value,
                    "message_index": message_index,
                    "start": d.start,
                    "end": d.end,
                    "placeholder": placeholder,
                    "tenant": self.tenant,
                    "request_id": self.request_id,
                    "trace_id": self._trace_id,
                }
            },
        )

    def outcome(self, action: Action, reason: str) -> None:
        REQUESTS.labels(self.direction.value, action.name.lower()).inc()
        trace.get_current_span().set_attributes(
            {
                "llmesh.safety.action": action.name.lower(),
                "llmesh.safety.findings": sorted(self._types),
                "llmesh.safety.direction": self.direction.value,
            }
        )
        self._log.info(
            "safety outcome",
            extra={
                "fields": {
                    "event": "safety.outcome",
                    "action": action.name.lower(),
                    "reason": reason,
                    "direction": self.direction.value,
                    "tenant": self.tenant,
                    "request_id": self.request_id,
                    "trace_id": self._trace_id,
                }
            },
        )
