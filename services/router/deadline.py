"""Deadlines derived from the caller's: every step gets min(its own limit, time left)."""

from __future__ import annotations

import time
from collections.abc import Callable

from libs.runtime.errors import DeadlineExceeded

MIN_STEP_S = 0.001


class Deadline:
    """An absolute point in time on the monotonic clock."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.at = clock() + seconds

    def remaining(self) -> float:
        """Seconds left (may be negative)."""
        return self.at - self._clock()

    def expired(self) -> bool:
        """Whether no time is left."""
        return self.remaining() <= 0

    def step(self, limit_s: float, what: str) -> float:
        """Timeout for a step: its own limit or what is left, whichever is shorter.

        Raises DeadlineExceeded naming the step when nothing is left.
        """
        left = self.remaining()
        if left <= MIN_STEP_S:
            raise DeadlineExceeded(f"request deadline reached before {what}", reason="DEADLINE_EXCEEDED")
        return min(limit_s, left)
