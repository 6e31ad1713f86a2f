"""`model: auto`: complexity estimate and the cheapest capable model whose context fits."""

from __future__ import annotations

import pytest

from libs.runtime.errors import InvalidArgument
from services.router.registry import ModelRegistry
from services.router.routing import choose, estimate

REG = ModelRegistry.from_yaml(
    """
models:
  - {name: cheap, context_length: 2048, input_price_per_1k: 0.1, output_price_per_1k: 0.2, tier: 1}
  - {name: mid, context_length: 8192, input_price_per_1k: 0.5, output_price_per_1k: 1.0, tier: 2}
  - {name: mid-pricier, context_length: 8192, input_price_per_1k: 0.6, output_price_per_1k: 1.2, tier: 2}
  - {name: top, context_length: 32768, input_price_per_1k: 5, output_price_per_1k: 10, tier: 3}
"""
)


def test_plain_question_goes_to_the_cheapest_model() -> None:
    d = choose(REG.models, "What is the capital of France?", 20, 64)
    assert d.model.name == "cheap"
    assert "no complexity signals" in d.reason and "cheapest" in d.reason


def test_code_request_needs_tier_two_and_gets_the_cheaper_tier_two() -> None:
    d = choose(REG.models, "Write a Python function that parses dates", 30, 200)
    assert d.model.name == "mid"
    assert "code keywords" in d.reason and "tier >= 2" in d.reason


def test_signals_add_up_to_tier_three() -> None:
    cx = estimate("Prove this theorem step by step and write the code", 1500, 1024)
    assert cx.needed_tier == 3
    assert cx.score == 2 + 2 + 1 + 1 + 1
    assert (
        choose(REG.models, "Prove this theorem step by step and write code", 1500, 1024).model.name == "top"
    )


def test_context_must_fit_prompt_plus_completion() -> None:
    d = choose(REG.models, "hello", 2000, 100)
    assert d.model.name == "mid"
    assert "2100 tokens" in d.reason
    with pytest.raises(InvalidArgument) as err:
        choose(REG.models, "hello", 40000, 100)
    assert err.value.reason == "CONTEXT_TOO_LONG"


def test_when_no_model_is_capable_enough_the_most_capable_fitting_one_is_used() -> None:
    only_cheap = [REG.get("cheap"), REG.get("mid")]
    d = choose(only_cheap, "Prove the theorem and write code step by step", 10, 64)
    assert d.model.name == "mid"
    assert "no model reaches that tier" in d.reason


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(InvalidArgument):
        choose([], "hi", 1, 1)
