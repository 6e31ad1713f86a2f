from __future__ import annotations

import numpy as np
import pytest

from libs.runtime.errors import InvalidArgument
from services.inference.generation import SamplingConfig
from services.inference.sampling import Sampler


def _logits(seed: int = 0, vocab: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=vocab).astype(np.float32) * 3


def test_greedy_is_argmax() -> None:
    logits = _logits()
    assert Sampler(SamplingConfig())(logits) == int(np.argmax(logits))
    assert Sampler(SamplingConfig(temperature=1.0, top_k=1))(logits) == int(np.argmax(logits))


def test_same_seed_same_draws_different_seed_differs() -> None:
    cfg = SamplingConfig(temperature=1.0, seed=42)
    rows = [_logits(i) for i in range(50)]
    first, second = Sampler(cfg), Sampler(cfg)
    a = [first(r) for r in rows]
    assert a == [second(r) for r in rows]
    other = Sampler(SamplingConfig(temperature=1.0, seed=43))
    assert [other(r) for r in rows] != a


def test_top_k_restricts_to_k_best() -> None:
    logits = _logits()
    best = set(np.argsort(-logits)[:5].tolist())
    sampler = Sampler(SamplingConfig(temperature=2.0, top_k=5, seed=1))
    assert {sampler(logits) for _ in range(200)} <= best


def test_top_p_small_keeps_only_the_mode() -> None:
    logits = _logits()
    sampler = Sampler(SamplingConfig(temperature=1.0, top_p=1e-6, seed=3))
    assert {sampler(logits) for _ in range(50)} == {int(np.argmax(logits))}


def test_temperature_sampling_follows_softmax() -> None:
    logits = np.array([0.0, np.log(3.0)], np.float32)
    sampler = Sampler(SamplingConfig(temperature=1.0, seed=7))
    draws = np.array([sampler(logits) for _ in range(4000)])
    assert 0.70 < draws.mean() < 0.80


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=2.5),
        SamplingConfig(top_p=0.0),
        SamplingConfig(top_k=-1),
        SamplingConfig(max_tokens=0),
        SamplingConfig(stop=("a", "b", "c", "d", "e")),
        SamplingConfig(stop=("x" * 65,)),
    ],
)
def test_validation_rejects_out_of_range(cfg: SamplingConfig) -> None:
    with pytest.raises(InvalidArgument):
        cfg.validate()
