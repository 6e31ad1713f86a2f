"""Semantic hit guards: numbers must agree, one swapped content word is a different question."""

from __future__ import annotations

import pytest

from services.cache.semantic import guard_rejects


@pytest.mark.parametrize(
    ("stored", "asked", "reason"),
    [
        ("Convert 30 USD to EUR.", "Convert 40 USD to EUR.", "numbers"),
        ("Is 1,000 a lot?", "Is 1000 a lot?", ""),
        ("Schedule a meeting for Tuesday at 3pm.", "Schedule a meeting for Thursday at 3pm.", "swap"),
        ("Book a flight from Boston to Chicago.", "Book a flight from Chicago to Boston.", "swap"),
        ("What is the capital of France?", "Which city is the capital of France?", ""),
        ("Explain what a REST API is.", "Can you explain what REST APIs are?", ""),
    ],
)
def test_guard(stored: str, asked: str, reason: str) -> None:
    assert guard_rejects(stored, asked) == reason
