"""Exact-key normalisation, hashing and entry ids."""

from __future__ import annotations

import pytest

from libs.runtime.errors import InvalidArgument
from services.cache.keys import CacheKey, Namespace, Sampling, entry_hash, normalise, parse_entry_id


def _hash(**kw: object) -> str:
    sampling = kw.pop("sampling", Sampling())
    key = CacheKey(**{"tenant": "acme", "model": "m", "prompt_token_ids": (1, 2, 3), **kw})  # type: ignore[arg-type]
    return entry_hash(key, normalise(sampling))  # type: ignore[arg-type]


def test_greedy_ignores_irrelevant_params_and_unset_equals_zero() -> None:
    base = _hash(sampling=Sampling())
    assert _hash(sampling=Sampling(temperature=0.0, top_p=0.5, top_k=40, seed=7)) == base
    assert _hash(sampling=Sampling(top_k=1, temperature=0.7)) == base


def test_stop_order_and_float_rounding_do_not_change_the_key() -> None:
    a = _hash(sampling=Sampling(temperature=0.7, seed=1, stop=("b", "a")))
    b = _hash(sampling=Sampling(temperature=0.70000001, seed=1, stop=("a", "b", "a")))
    assert a == b


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "other"},
        {"model": "m2"},
        {"model_version": "v2"},
        {"prompt_token_ids": (1, 2, 4)},
        {"sampling": Sampling(max_tokens=5)},
        {"sampling": Sampling(stop=("x",))},
        {"sampling": Sampling(temperature=0.5, seed=3)},
    ],
)
def test_every_identifying_field_changes_the_key(change: dict[str, object]) -> None:
    assert _hash(**change) != _hash()


def test_determinism() -> None:
    assert normalise(Sampling()).deterministic
    assert normalise(Sampling(temperature=0.8, seed=5)).deterministic
    assert not normalise(Sampling(temperature=0.8)).deterministic


@pytest.mark.parametrize("bad", [Sampling(temperature=3.0), Sampling(top_p=0.0), Sampling(top_k=-1)])
def test_out_of_range_sampling_is_rejected(bad: Sampling) -> None:
    with pytest.raises(InvalidArgument):
        normalise(bad)


def test_entry_id_round_trips_with_odd_characters() -> None:
    ns = Namespace("tenant:with*glob?", "model/name", "2024-01")
    parsed_ns, h = parse_entry_id(ns.entry_id("ab" * 32))
    assert parsed_ns == ns and h == "ab" * 32
    assert "*" not in ns.prefix and ns.prefix.count(":") == 4


@pytest.mark.parametrize("bad", ["", "x.y.z", "zz.6d.31." + "a" * 64, "74.6d.31.short"])
def test_malformed_entry_ids_are_invalid_argument(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_entry_id(bad)


def test_key_needs_tokens_or_text() -> None:
    with pytest.raises(InvalidArgument):
        CacheKey("acme", "m").validate()
    CacheKey("acme", "m", semantic_text="hi").validate()
