"""Policy decisions on findings, shared by whole-text and streaming screening."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.safety.findings import MESSAGE_LEVEL_TYPES, Detection, resolve_overlaps
from services.safety.pii import find_pii
from services.safety.policy import Action, DirectionPolicy
from services.safety.redaction import Redactor
from services.safety.secret_scan import find_secrets


@dataclass(frozen=True)
class Decision:
    """A finding with the action the policy took on it."""

    detection: Detection
    message_index: int
    action: Action
    placeholder: str = ""


def span_detections(text: str) -> list[Detection]:
    """PII and secret findings in `text`, overlaps resolved."""
    return resolve_overlaps(find_pii(text) + find_secrets(text))


def block_reason(decisions: Sequence[Decision]) -> str:
    """Human-readable reason naming the blocking finding types and rules."""
    parts = [
        f"{d.detection.type} (rule {d.detection.rule}, score {d.detection.score:.2f}, "
        f"message {d.message_index})"
        for d in decisions
        if d.action is Action.BLOCK
    ]
    return "blocked by safety policy: " + "; ".join(parts) if parts else ""


def apply_redactions(text: str, decisions: Sequence[Decision], offset: int = 0) -> str:
    """`text` with every decided span replaced by its placeholder (spans shifted by `offset`)."""
    spans = sorted(
        (d for d in decisions if d.placeholder and d.detection.type not in MESSAGE_LEVEL_TYPES),
        key=lambda d: d.detection.start,
        reverse=True,
    )
    for d in spans:
        start, end = d.detection.start - offset, d.detection.end - offset
        text = text[:start] + d.placeholder + text[end:]
    return text


def decide_spans(
    side: DirectionPolicy, detections: Sequence[Detection], index: int, redactor: Redactor
) -> list[Decision]:
    """Policy decisions for span findings that reach their thresholds."""
    out: list[Decision] = []
    for d in detections:
        if not side.reported(d.type, d.score):
            continue
        action = side.decide(d.type, d.score)
        placeholder = redactor.placeholder(d.type, d.value) if action is not Action.ALLOW else ""
        out.append(Decision(d, index, action, placeholder))
    return out
