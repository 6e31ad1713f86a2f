"""Budget math: holds, windows, usage parsing (the Lua scripts run against a real Redis in
tests/services/router/test_shared_state.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from services.router.accounting import hold_usd, parse_usage, seconds_to_window_end, window_keys


def test_hold_is_the_worst_case_cost() -> None:
    assert hold_usd(1000, 500, 0.1, 0.2) == pytest.approx(0.1 + 0.1)
    assert hold_usd(0, 0, 1, 1) == 0


def test_windows_are_utc_days_and_months() -> None:
    t = dt.datetime(2026, 1, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    day, month = window_keys("abc", t)
    assert day == "llmesh:usage:abc:d:2026-02-01" and month == "llmesh:usage:abc:m:2026-02"
    assert seconds_to_window_end("day", t) == pytest.approx(19.5 * 3600)
    assert seconds_to_window_end("month", dt.datetime(2026, 12, 31, 12, tzinfo=dt.UTC)) == pytest.approx(
        12 * 3600
    )


def test_usage_hash_parses_into_totals_and_models() -> None:
    raw = {
        "requests": "3", "prompt_tokens": "30", "completion_tokens": "60", "cost_usd": "0.25",
        "reserved_usd": "-1e-18",
        "a|requests": "2", "a|prompt_tokens": "20", "a|completion_tokens": "40", "a|cost_usd": "0.2",
        "b|requests": "1", "b|cost_usd": "0.05",
    }  # fmt: skip
    u = parse_usage("day", raw, budget_usd=1.0)
    assert u.totals.requests == 3 and u.spent_usd == pytest.approx(0.25)
    assert u.models["a"].completion_tokens == 40 and u.models["b"].requests == 1
    assert u.reserved_usd == 0.0
    assert u.remaining_usd == pytest.approx(0.75)
    assert parse_usage("day", raw, budget_usd=0).remaining_usd == 0.0
    assert parse_usage("day", {**raw, "cost_usd": "5"}, budget_usd=1.0).remaining_usd == 0.0
