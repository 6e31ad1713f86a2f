"""Screening of whole texts: run the detectors, apply the tenant's policy, redact, decide.

`Screener` is the domain entry point the servicer calls; it has no gRPC imports. Output streams
are screened by `services.safety.streaming.OutputStream`, opened through `Screener.open_stream`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace

from services.safety.audit import AuditLog
from services.safety.decisions import Decision, apply_redactions, block_reason, decide_spans, span_detections
from services.safety.findings import Detection
from services.safety.injection import InjectionClassifier, find_injection_phrases
from services.safety.policy import Action, Direction, DirectionPolicy, Policy, PolicyStore
from services.safety.redaction import Redactor
from services.safety.streaming import OutputStream
from services.safety.toxicity import ToxicityScorer


@dataclass
class ScreenResult:
    """Outcome of screening a list of messages (or one text)."""

    action: Action
    texts: list[str]
    decisions: list[Decision]
    reason: str = ""
    restore: dict[str, str] = field(default_factory=dict)


class Screener:
    """Applies detectors and per-tenant policy to input messages and output texts."""

    def __init__(
        self,
        policies: PolicyStore,
        injection: InjectionClassifier | None,
        toxicity: ToxicityScorer | None,
        max_holdback_chars: int = 512,
    ) -> None:
        self.policies = policies
        self.max_holdback_chars = max_holdback_chars
        self._injection = injection
        self._toxicity = toxicity

    def _message_level(
        self, policy: Policy, side: DirectionPolicy, direction: Direction, messages: Sequence[tuple[str, str]]
    ) -> list[list[Detection]]:
        found: list[list[Detection]] = [[] for _ in messages]
        if direction is Direction.INPUT and side.active("PROMPT_INJECTION"):
            picked = [i for i, (role, text) in enumerate(messages) if role in policy.injection_roles and text]
            for i in picked:
                found[i].extend(find_injection_phrases(messages[i][1]))
            if self._injection is not None and picked:
                for i, detections in zip(
                    picked, self._injection.detect([messages[i][1] for i in picked]), strict=True
                ):
                    found[i].extend(detections)
        if self._toxicity is not None and side.active("TOXICITY"):
            for i, detections in enumerate(self._toxicity.detect([text for _, text in messages])):
                found[i].extend(detections)
        return found

    def _detectors(self, side: DirectionPolicy, direction: Direction) -> list[str]:
        """Names of the detectors a screening under `side` runs (for the trace)."""
        names = ["pii", "secrets"]
        if direction is Direction.INPUT and side.active("PROMPT_INJECTION"):
            names += ["injection_phrases"] + (["injection_classifier"] if self._injection is not None else [])
        if self._toxicity is not None and side.active("TOXICITY"):
            names.append("toxicity")
        return names

    def screen_messages(
        self, tenant: str, request_id: str, messages: Sequence[tuple[str, str]], direction: Direction
    ) -> ScreenResult:
        """Screen (role, content) messages under `tenant`'s policy for `direction`."""
        policy = self.policies.get(tenant)
        side = policy.direction(direction)
        audit = AuditLog(tenant, request_id, direction)
        redactor = Redactor()
        decisions: list[Decision] = []
        texts: list[str] = []
        message_level = self._message_level(policy, side, direction, messages)
        trace.get_current_span().set_attribute("llmesh.safety.detectors", self._detectors(side, direction))
        for index, (_, text) in enumerate(messages):
            spans = decide_spans(side, span_detections(text), index, redactor)
            texts.append(apply_redactions(text, spans))
            decisions.extend(spans)
            for d in message_level[index]:
                if side.reported(d.type, d.score):
                    decisions.append(Decision(d, index, side.decide(d.type, d.score)))
        action = max((d.action for d in decisions), default=Action.ALLOW)
        reason = block_reason(decisions)
        restore: dict[str, str] = {}
        if policy.restore_redacted and action is not Action.BLOCK:
            values = redactor.mapping()
            restore = {d.placeholder: values[d.placeholder] for d in decisions if d.action is Action.REDACT}
        for decision in decisions:
            audit.finding(decision.detection, decision.action, decision.message_index, decision.placeholder)
        audit.outcome(action, reason)
        return ScreenResult(action, texts, decisions, reason, restore)

    def screen_text(self, tenant: str, request_id: str, text: str, direction: Direction) -> ScreenResult:
        """Screen one text, read as a user message (input) or an assistant message (output)."""
        role = "user" if direction is Direction.INPUT else "assistant"
        return self.screen_messages(tenant, request_id, [(role, text)], direction)

    def open_stream(self, tenant: str, request_id: str, restore: Mapping[str, str]) -> OutputStream:
        """Start screening a stream of output chunks."""
        policy = self.policies.get(tenant)
        audit = AuditLog(tenant, request_id, Direction.OUTPUT)
        return OutputStream(policy, audit, restore, self._toxicity, self.max_holdback_chars)
