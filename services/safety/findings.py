"""What a detector reports: a typed span with a score and the rule that fired."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Finding types that cover a whole message rather than a span: they can be allowed or block the
# request, never redacted.
MESSAGE_LEVEL_TYPES = frozenset({"PROMPT_INJECTION", "TOXICITY"})

# When two span findings overlap, the higher priority wins (then the longer span).
PRIORITY: dict[str, int] = {
    "PRIVATE_KEY": 100,
    "AWS_ACCESS_KEY": 95,
    "AWS_SECRET_KEY": 95,
    "API_KEY": 90,
    "JWT": 85,
    "BEARER_TOKEN": 80,
    "CREDIT_CARD": 70,
    "IBAN": 70,
    "US_SSN": 65,
    "EMAIL": 60,
    "IP_ADDRESS": 50,
    "DATE_OF_BIRTH": 45,
    "PHONE": 40,
    "SECRET": 30,
}


@dataclass(frozen=True, slots=True)
class Detection:
    """One finding. `value` is the matched text: used for redaction, never logged."""

    type: str
    start: int
    end: int
    score: float
    rule: str
    value: str

    def overlaps(self, other: Detection) -> bool:
        return self.start < other.end and other.start < self.end

    def shifted(self, offset: int) -> Detection:
        """The same finding with its span moved by `offset` code points."""
        return Detection(self.type, self.start + offset, self.end + offset, self.score, self.rule, self.value)


def resolve_overlaps(detections: Iterable[Detection]) -> list[Detection]:
    """Keep the strongest of overlapping span findings; returns them sorted by start."""
    ranked = sorted(
        detections,
        key=lambda d: (-PRIORITY.get(d.type, 0), -(d.end - d.start), -d.score, d.start),
    )
    kept: list[Detection] = []
    for candidate in ranked:
        if not any(candidate.overlaps(k) for k in kept):
            kept.append(candidate)
    return sorted(kept, key=lambda d: d.start)
