"""PrefixCache without a model: chain digests, longest-prefix lookup, LRU bound, reported digests."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.kv_slots import KvSlots
from services.inference.model_info import GraphLayout
from services.inference.prefix_cache import PrefixCache, chain_digests, wire_digest

BLOCK = 4


def _reader(token_ids: list[int]):
    """KV whose every value is the token id at that position, so copies can be checked."""
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        reads.append((start, stop))
        row = np.asarray(token_ids[start:stop], np.float32)
        kv = np.broadcast_to(row[None, None, :, None], (2, 1, stop - start, 3)).copy()
        return kv, -kv

    return read, reads


def test_chain_digest_commits_to_the_whole_prefix() -> None:
    a = chain_digests(list(range(12)), BLOCK)
    b = chain_digests([*range(4), 99, *range(5, 12)], BLOCK)
    assert len(a) == 3 and len(set(a)) == 3
    assert a[0] == b[0]
    assert a[1] != b[1] and a[2] != b[2]  # a change in block 1 changes every later digest
    assert chain_digests(list(range(11)), BLOCK) == a[:2]  # only full blocks
    assert chain_digests(list(range(12)), BLOCK, max_blocks=1) == a[:1]
    assert 0 <= wire_digest(a[0]) < 2**64


def test_lookup_returns_the_longest_cached_prefix_and_keeps_a_token_to_prefill() -> None:
    cache = PrefixCache(BLOCK, max_blocks=16)
    prompt = list(range(100, 110))  # two full blocks and two tokens
    read, reads = _reader(prompt)
    assert cache.insert(prompt, read) == 2
    assert reads == [(0, 4), (4, 8)]
    assert [b.tokens for b in cache.lookup([*prompt[:8], 1, 2, 3])] == [tuple(prompt[:4]), tuple(prompt[4:8])]
    assert len(cache.lookup([*prompt[:6], 7, 7])) == 1  # diverges inside block 1
    assert cache.lookup([5, *prompt[1:]]) == []
    # exactly two blocks long: the last block is left to prefill so the step yields logits
    assert len(cache.lookup(prompt[:8])) == 1
    block = cache.lookup(prompt)[1]
    assert block.keys[0, 0, :, 0].tolist() == prompt[4:8]
    assert block.values[1, 0, :, 2].tolist() == [-t for t in prompt[4:8]]


def test_insert_copies_only_missing_blocks() -> None:
    cache = PrefixCache(BLOCK, max_blocks=16)
    first = list(range(8))
    cache.insert(first, _reader(first)[0])
    longer = [*first, 8, 9, 10, 11, 12]
    read, reads = _reader(longer)
    assert cache.insert(longer, read) == 1
    assert reads == [(8, 12)]
    assert len(cache) == 3 and cache.tokens == 12


def test_eviction_trims_chains_from_their_ends() -> None:
    cache = PrefixCache(BLOCK, max_blocks=4)
    old = list(range(12))  # three blocks
    cache.insert(old, _reader(old)[0])
    new = list(range(50, 62))  # three more: one old block must go, then another
    cache.insert(new, _reader(new)[0])
    assert len(cache) == 4
    # the old chain lost its deepest blocks, not its first one
    assert len(cache.lookup([*old, 0])) == 1
    assert len(cache.lookup([*new, 0])) == 3


def test_a_hit_protects_its_chain_from_eviction() -> None:
    cache = PrefixCache(BLOCK, max_blocks=4)
    shared = list(range(8))
    cache.insert(shared, _reader(shared)[0])
    other = list(range(30, 38))
    cache.insert(other, _reader(other)[0])
    assert len(cache.lookup([*shared, 1])) == 2  # shared is now the most recent chain
    third = list(range(60, 68))
    cache.insert(third, _reader(third)[0])
    assert len(cache.lookup([*shared, 1])) == 2
    assert cache.lookup([*other, 1]) == []


def test_wire_digests_most_recent_first_and_bounded() -> None:
    cache = PrefixCache(BLOCK, max_blocks=8)
    a, b = list(range(8)), list(range(20, 24))
    cache.insert(a, _reader(a)[0])
    cache.insert(b, _reader(b)[0])
    da, db = chain_digests(a, BLOCK), chain_digests(b, BLOCK)
    assert cache.wire_digests(10) == [wire_digest(db[0]), wire_digest(da[0]), wire_digest(da[1])]
    assert cache.wire_digests(1) == [wire_digest(db[0])]
    assert cache.wire_digests(0) == []


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        PrefixCache(0, 4)
    with pytest.raises(ValueError):
        PrefixCache(4, 0)


def test_kv_slots_read_and_write_round_trip_one_block() -> None:
    layout = GraphLayout("ids", "mask", None, "logits", "pk.%d", "pv.%d", "ok.%d", "ov.%d",
                         num_layers=2, num_kv_heads=3, head_size=5, vocab_size=10)  # fmt: skip
    slots = KvSlots(layout, max_batch=2, context=32)
    rng = np.random.default_rng(0)
    for buf in (*slots._keys, *slots._values):
        buf[0] = rng.standard_normal(buf.shape[1:])
    keys, values = slots.read(0, 8, 12)
    assert keys.shape == values.shape == (2, 3, 4, 5)
    slots.write(1, 20, keys, values)
    for buf in (*slots._keys, *slots._values):
        assert np.array_equal(buf[1, :, 20:24], buf[0, :, 8:12])
    assert not slots._keys[0][1, :, :20].any() and not slots._keys[0][1, :, 24:].any()
    slots._keys[0][0, :, 8:12] = 0.0  # read returned a copy
    assert keys[0].any()
