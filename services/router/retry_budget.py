"""A retry budget: retries may add at most a fixed fraction of extra load.

Every request deposits `ratio` tokens (capped), every retry withdraws one. With ratio 0.2 a
backend that fails everything sees at most ~20% more calls than the callers made, instead of a
retry storm; `min_tokens` keeps a quiet router able to retry at all.
"""

from __future__ import annotations

import threading


class RetryBudget:
    """Token bucket of retries, filled by requests."""

    def __init__(self, ratio: float = 0.2, min_tokens: float = 10.0, max_tokens: float | None = None):
        if not 0 <= ratio <= 1:
            raise ValueError("ratio must be in [0, 1]")
        self.ratio = ratio
        self.max_tokens = max_tokens if max_tokens is not None else max(min_tokens, 100 * ratio)
        self._tokens = min_tokens
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.refused = 0

    @property
    def tokens(self) -> float:
        """Retries available now."""
        return self._tokens

    def on_request(self) -> None:
        """Record a new request (adds `ratio` retry tokens)."""
        with self._lock:
            self.requests += 1
            self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_retry(self) -> bool:
        """Take one retry token; False when the budget is spent."""
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.retries += 1
                return True
            self.refused += 1
            return False
