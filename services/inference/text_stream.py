"""Incremental detokenization and stop-sequence matching for streamed text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What the detokenizer needs from a tokenizer."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character.

    Only a short window of recent tokens is decoded each step: the text of the tokens before
    ``_read`` is already emitted, and a delta is released only when it no longer ends in an
    incomplete byte sequence (decoded as U+FFFD).
    """

    def __init__(self, decoder: Decoder) -> None:
        self._decoder = decoder
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be empty)."""
        self._ids.append(token_id)
        before = self._decoder.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = self._decoder.decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


class StopMatcher:
    """Holds back text that could be the start of a stop sequence; cuts at a full match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""
        self.matched = False

    def push(self, text: str) -> str:
        """Add text; return what is safe to emit. Sets ``matched`` when a stop sequence appears."""
        if not self._stops:
            return text
        pending = self._held + text
        cut = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.matched = True
            self._held = ""
            return pending[:cut]
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:n]):
                    hold = n
                    break
        self._held = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """Release held text at the end of a generation that did not stop on a sequence."""
        held, self._held = self._held, ""
        return held
