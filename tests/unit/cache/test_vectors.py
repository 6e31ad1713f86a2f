"""The in-memory mirror's exact nearest-neighbour search against a brute-force reference."""

from __future__ import annotations

import numpy as np

from services.cache.vectors import VectorMirror


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_search_matches_brute_force_after_adds_and_removes() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 300, 16)
    mirror = VectorMirror(16)
    for i, v in enumerate(vectors):
        mirror.upsert(f"h{i}", v)
    removed = set(range(0, 300, 3))
    for i in removed:
        assert mirror.remove(f"h{i}")
    assert not mirror.remove("h0")
    kept = [i for i in range(300) if i not in removed]
    assert len(mirror) == len(kept)
    query = _unit(rng, 1, 16)[0]
    scores = vectors[kept] @ query
    expected = [f"h{kept[i]}" for i in np.argsort(-scores)[:5]]
    got = mirror.search(query, 5, -1.0)
    assert [n.entry_hash for n in got] == expected
    assert got[0].similarity >= got[-1].similarity


def test_upsert_replaces_and_threshold_filters() -> None:
    mirror = VectorMirror(2)
    mirror.upsert("a", np.array([1.0, 0.0], dtype=np.float32))
    mirror.upsert("a", np.array([0.0, 1.0], dtype=np.float32))
    assert len(mirror) == 1
    assert mirror.search(np.array([0.0, 1.0], dtype=np.float32), 3, 0.9)[0].entry_hash == "a"
    assert mirror.search(np.array([1.0, 0.0], dtype=np.float32), 3, 0.9) == []
