"""The retry budget caps retries at a fraction of requests."""

from __future__ import annotations

import pytest

from services.router.retry_budget import RetryBudget


def test_retries_are_bounded_by_the_ratio_once_the_floor_is_spent() -> None:
    budget = RetryBudget(ratio=0.2, min_tokens=2)
    granted = 0
    for _ in range(1000):
        budget.on_request()
        if budget.try_retry():
            granted += 1
    assert granted <= 0.2 * 1000 + 2
    assert granted >= 0.2 * 1000 - 2
    assert budget.retries == granted and budget.refused == 1000 - granted


def test_floor_allows_retries_on_a_quiet_router_then_refuses() -> None:
    budget = RetryBudget(ratio=0.0, min_tokens=3)
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]


def test_tokens_are_capped() -> None:
    budget = RetryBudget(ratio=1.0, min_tokens=0, max_tokens=5)
    for _ in range(100):
        budget.on_request()
    assert budget.tokens == 5


def test_ratio_is_validated() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=1.5)
