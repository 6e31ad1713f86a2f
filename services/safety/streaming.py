"""Screening of streamed model output, chunk by chunk.

Each chunk is appended to the text not yet released. Detectors run over that text plus a short
window of already released text (so context words such as "Bearer" or "born on" still count).
Everything is released except the suffix that could still grow into a finding whose action is not
`allow` for this tenant: a run of key or secret characters, a trailing token (an e-mail when
e-mails are redacted), a run of digits and separators (a card, SSN or phone number under way), an
IBAN or IPv6 address under way, a PEM header under way, a few words after a context phrase, or a
placeholder under way while input values are restored. Types the policy allows hold nothing back:
under the default output policy e-mails, phones and IP addresses do not delay release, while a
trailing word still waits because it could become a secret. A card number split over three
chunks is therefore held until it is complete, then redacted. A finding whose action is block
ends the stream at once, before anything more is released. Placeholders from input redaction are
restored in released text when the policy says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.safety.audit import AuditLog
from services.safety.decisions import Decision, apply_redactions, block_reason, decide_spans, span_detections
from services.safety.findings import Detection
from services.safety.policy import Action, DirectionPolicy, Policy
from services.safety.redaction import Redactor, restore
from services.safety.toxicity import TOXICITY_RULE, ToxicityScorer

# Released text kept as detector context, in characters.
CONTEXT_CHARS = 64
# Released text scored together with new text for toxicity, in characters.
TOXICITY_CONTEXT_CHARS = 200

_TOKEN_TAIL = re.compile(r"\S+$")
_DIGIT_TAIL = re.compile(r"[+(]?\d[\d ().\-/]*$")
_IBAN_TAIL = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4})*\s?$|(?<![A-Za-z0-9])[A-Z]{1,2}\d?$")
_PEM_TAIL = re.compile(r"-{1,5}(?:B(?:E(?:G(?:I(?:N(?: [A-Z0-9 ]*-{0,5})?)?)?)?)?)?$")
# A run that could still grow into a key or a high-entropy secret (their alphabets, and `=`).
_KEY_TAIL = re.compile(r"[A-Za-z0-9+/_=-]+$")
_JWT_TAIL = re.compile(r"(?<![A-Za-z0-9_.-])e(?:y(?:J[A-Za-z0-9_.=-]*)?)?$")
_IPV6_TAIL = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$|(?<![0-9A-Za-z])[0-9A-Fa-f]{1,4}$")
_BEARER_TAIL = re.compile(r"(?i)\bbearer\s+\S*$")
_PLACEHOLDER_TAIL = re.compile(r"\[[A-Za-z0-9_]*$")


def _context_tail(words: str) -> re.Pattern[str]:
    """A context phrase and up to 30 characters after it (the value it introduces)."""
    return re.compile(rf"(?i)\b(?:{words})\b[^\n]{{0,30}}$")


_DOB_CONTEXT = _context_tail(r"born(?:\s+on)?|d\.?o\.?b\.?|date\s+of\s+birth|birth\s*date|birthday")
_SSN_CONTEXT = _context_tail(r"ssn|social\s+security(?:\s+number)?")
_KEY_CONTEXT = _context_tail(r"bearer|authorization|api[_-]?key|secret|token|passw(?:or)?d")

# For each span finding type, the suffixes that could still grow into a finding of that type.
TAILS_BY_TYPE: dict[str, tuple[re.Pattern[str], ...]] = {
    "EMAIL": (_TOKEN_TAIL,),
    "PHONE": (_DIGIT_TAIL,),
    "CREDIT_CARD": (_DIGIT_TAIL,),
    "IBAN": (_IBAN_TAIL, _DIGIT_TAIL),
    "US_SSN": (_DIGIT_TAIL, _SSN_CONTEXT),
    "IP_ADDRESS": (_DIGIT_TAIL, _IPV6_TAIL),
    "DATE_OF_BIRTH": (_DIGIT_TAIL, _DOB_CONTEXT),
    "PRIVATE_KEY": (_PEM_TAIL,),
    "AWS_ACCESS_KEY": (_KEY_TAIL,),
    "AWS_SECRET_KEY": (_KEY_TAIL, _KEY_CONTEXT),
    "API_KEY": (_KEY_TAIL,),
    "JWT": (_KEY_TAIL, _JWT_TAIL),
    "BEARER_TOKEN": (_KEY_TAIL, _BEARER_TAIL, _KEY_CONTEXT),
    "SECRET": (_KEY_TAIL, _KEY_CONTEXT),
}
ALL_TAILS: tuple[re.Pattern[str], ...] = tuple(dict.fromkeys(t for ts in TAILS_BY_TYPE.values() for t in ts))


def tails_for(side: DirectionPolicy, restoring: bool) -> tuple[re.Pattern[str], ...]:
    """The hold-back patterns `side` needs: those of the types whose action is not `allow`.

    A type with no entry in `TAILS_BY_TYPE` whose rule acts (possible only through `default`)
    keeps every pattern. While input placeholders are restored, a placeholder under way is held.
    """
    acting = {t for t in TAILS_BY_TYPE if side.active(t)}
    if side.default.action is not Action.ALLOW:
        tails = ALL_TAILS
    else:
        tails = tuple(dict.fromkeys(t for kind in sorted(acting) for t in TAILS_BY_TYPE[kind]))
    return (*tails, _PLACEHOLDER_TAIL) if restoring else tails


def holdback_start(buffer: str, floor: int, tails: tuple[re.Pattern[str], ...] = ALL_TAILS) -> int:
    """Earliest index >= floor from which `buffer`'s suffix could still become part of a match."""
    start = len(buffer)
    for pattern in tails:
        m = pattern.search(buffer, floor)
        if m is not None and m.start() < start:
            start = m.start()
    return start


@dataclass
class StreamStep:
    """What one chunk releases."""

    text: str
    action: Action
    decisions: list[Decision] = field(default_factory=list)
    reason: str = ""


class StreamClosed(Exception):
    """A chunk arrived after the stream ended (blocked or flushed)."""


class OutputStream:
    """Per-stream screening state."""

    def __init__(
        self,
        policy: Policy,
        audit: AuditLog,
        restore_map: Mapping[str, str],
        toxicity: ToxicityScorer | None,
        max_holdback_chars: int = 512,
    ) -> None:
        self._policy = policy
        self._side = policy.output
        self._audit = audit
        self._restore = dict(restore_map) if policy.restore_redacted else {}
        self._toxicity = toxicity if self._side.active("TOXICITY") else None
        self._tails = tails_for(self._side, bool(self._restore))
        self._max_holdback = max_holdback_chars
        self._redactor = Redactor()
        self._pending = ""
        self._context = ""
        self._released_raw = ""
        self._offset = 0
        self._worst = Action.ALLOW
        self.closed = False

    def _block(self, decisions: list[Decision]) -> StreamStep:
        for d in decisions:
            self._audit.finding(d.detection, d.action, 0, d.placeholder)
        reason = block_reason(decisions)
        self._audit.outcome(Action.BLOCK, reason)
        self.closed = True
        return StreamStep("", Action.BLOCK, decisions, reason)

    def _to_stream(self, d: Detection, base: int) -> Detection:
        """A buffer-relative finding moved to stream offsets."""
        return d.shifted(self._offset - base)

    def feed(self, chunk: str, end_of_stream: bool = False) -> StreamStep:
        """Add a chunk; returns the text now safe to release (all of it at end of stream)."""
        if self.closed:
            raise StreamClosed("the output stream has already ended")
        self._pending += chunk
        buffer = self._context + self._pending
        base = len(self._context)
        detections = [d for d in span_detections(buffer) if d.end > base]

        blocking = [
            Decision(self._to_stream(d, base), 0, Action.BLOCK)
            for d in detections
            if self._side.reported(d.type, d.score) and self._side.decide(d.type, d.score) is Action.BLOCK
        ]
        if blocking:
            return self._block(blocking)

        cut = len(buffer) if end_of_stream else holdback_start(buffer, base, self._tails)
        if not end_of_stream and len(buffer) - cut > self._max_holdback:
            cut = len(buffer) - self._max_holdback
        moved = True
        while moved and not end_of_stream:
            moved = False
            for d in detections:
                if max(d.start, base) < cut < d.end:
                    cut, moved = max(d.start, base), True
        final = [
            Detection(d.type, max(d.start, base), d.end, d.score, d.rule, d.value)
            for d in detections
            if d.end <= cut
        ]
        decisions = decide_spans(self._side, final, 0, self._redactor)
        raw = buffer[base:cut]

        if self._toxicity is not None and raw.strip():
            window = self._released_raw[-TOXICITY_CONTEXT_CHARS:] + raw
            (score,) = self._toxicity.scores([window])
            if (
                self._side.reported("TOXICITY", score)
                and self._side.decide("TOXICITY", score) is Action.BLOCK
            ):
                end = self._offset + len(raw)
                detection = Detection("TOXICITY", self._offset, end, round(score, 4), TOXICITY_RULE, "")
                return self._block([Decision(detection, 0, Action.BLOCK)])

        released = apply_redactions(raw, decisions, offset=base)
        released = restore(released, self._restore)
        stream_decisions = [
            Decision(self._to_stream(d.detection, base), 0, d.action, d.placeholder) for d in decisions
        ]
        for decision in stream_decisions:
            self._audit.finding(decision.detection, decision.action, 0, decision.placeholder)
            self._worst = max(self._worst, decision.action)
        self._released_raw = (self._released_raw + raw)[-TOXICITY_CONTEXT_CHARS:]
        self._context = (self._context + raw)[-CONTEXT_CHARS:]
        self._pending = buffer[cut:]
        self._offset += len(raw)
        if end_of_stream:
            self.closed = True
            self._audit.outcome(self._worst, "")
        action = max((d.action for d in stream_decisions), default=Action.ALLOW)
        return StreamStep(released, action, stream_decisions)
