"""Replica choice: load first, then the replica holding the longest cached prefix of the prompt."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import numpy as np
import pytest

from services.inference.prefix_cache import PrefixCache
from services.router.inference_client import (
    CachedPrefixes,
    InferenceReplicas,
    cached_prefix_tokens,
    prefix_digests,
)
from services.router.registry import ModelSpec

BLOCK = 16
MODEL = "smollm2-135m-int8"
SPEC = ModelSpec(name="smol", backend_model=MODEL, context_length=2048, input_price_per_1k=0,
                 output_price_per_1k=0, tier=1)  # fmt: skip
SYSTEM = list(range(1000, 1100))  # a 100-token shared system prompt: six full blocks
PROMPT = [*SYSTEM, 7, 8, 9, 10, 11]


@pytest.fixture
async def replicas() -> AsyncIterator[InferenceReplicas]:
    backend = InferenceReplicas(
        ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], affinity_slack=2, affinity_min_tokens=64
    )
    for r in backend.replicas:
        r.models = {MODEL: f"{MODEL}@v1"}
    yield backend
    await backend.stop()


def _hold(backend: InferenceReplicas, index: int, tokens: list[int], model: str = MODEL) -> None:
    backend.replicas[index].prefixes = {
        model: CachedPrefixes(BLOCK, frozenset(prefix_digests(tokens, BLOCK)))
    }


def _first(backend: InferenceReplicas, prompt: list[int] = PROMPT) -> str:
    return backend.targets(SPEC, prompt)[0].name


def test_router_digests_are_the_replica_cache_digests() -> None:
    rng = random.Random(7)
    tokens = [rng.randrange(49152) for _ in range(83)]
    cache = PrefixCache(BLOCK, 64)
    zeros = np.zeros((1, 1, BLOCK, 1), np.float32)
    cache.insert(tokens, lambda start, stop: (zeros, zeros))
    assert set(cache.wire_digests(64)) == set(prefix_digests(tokens, BLOCK))
    assert len(prefix_digests(tokens, BLOCK)) == 83 // BLOCK


def test_cached_prefix_tokens_is_the_longest_held_block() -> None:
    digests = prefix_digests(PROMPT, BLOCK)
    assert cached_prefix_tokens(digests, BLOCK, {digests[1]}) == 32
    assert cached_prefix_tokens(digests, BLOCK, {digests[0]}) == 16
    assert cached_prefix_tokens(digests, BLOCK, set()) == 0
    other = prefix_digests([*SYSTEM[:16], *range(5000, 5030)], BLOCK)
    assert cached_prefix_tokens(digests, BLOCK, {other[1]}) == 0  # block 1 differs


async def test_the_replica_holding_the_longest_prefix_wins_among_equal_loads(
    replicas: InferenceReplicas,
) -> None:
    _hold(replicas, 1, SYSTEM[:16])
    _hold(replicas, 2, SYSTEM)
    assert {_first(replicas) for _ in range(6)} == {"inference-2"}


async def test_load_stays_the_primary_rule(replicas: InferenceReplicas) -> None:
    _hold(replicas, 2, SYSTEM)
    replicas.replicas[0].load = 1
    replicas.replicas[1].load = 2
    replicas.replicas[2].load = 3  # within the slack of 2: still preferred
    assert _first(replicas) == "inference-2"
    replicas.replicas[2].load = 4  # clearly worse: load order wins
    order = [t.name for t in replicas.targets(SPEC, PROMPT)]
    assert order == ["inference-0", "inference-1", "inference-2"]


async def test_calls_started_since_the_poll_count_as_load(replicas: InferenceReplicas) -> None:
    _hold(replicas, 2, SYSTEM)
    replicas.replicas[2].pending = 3
    assert _first(replicas) != "inference-2"


async def test_unreachable_replicas_are_never_preferred(replicas: InferenceReplicas) -> None:
    _hold(replicas, 0, SYSTEM)
    replicas.replicas[0].reachable = False
    assert replicas.targets(SPEC, PROMPT)[-1].name == "inference-0"


async def test_no_prompt_or_no_match_keeps_round_robin(replicas: InferenceReplicas) -> None:
    _hold(replicas, 2, SYSTEM, model="another-model")
    firsts = {_first(replicas) for _ in range(6)}
    assert firsts == {"inference-0", "inference-1", "inference-2"}
    _hold(replicas, 2, SYSTEM)
    assert {replicas.targets(SPEC)[0].name for _ in range(6)} == firsts


async def test_a_prompt_shorter_than_a_block_has_no_affinity(replicas: InferenceReplicas) -> None:
    _hold(replicas, 1, SYSTEM)
    assert {_first(replicas, SYSTEM[:10]) for _ in range(6)} == {"inference-0", "inference-1", "inference-2"}


async def test_a_small_saving_does_not_pin_a_prompt(replicas: InferenceReplicas) -> None:
    _hold(replicas, 1, SYSTEM[:48])  # three blocks: below the 64-token minimum
    assert {_first(replicas) for _ in range(6)} == {"inference-0", "inference-1", "inference-2"}
    _hold(replicas, 0, SYSTEM[:32])
    _hold(replicas, 2, SYSTEM[:32])
    _hold(replicas, 1, SYSTEM)  # 96 tokens, but only 64 more than the others hold
    assert {_first(replicas) for _ in range(6)} == {"inference-1"}
    _hold(replicas, 0, SYSTEM[:48])
    _hold(replicas, 2, SYSTEM[:48])  # now it saves only 48 over any of them
    assert {_first(replicas) for _ in range(6)} == {"inference-0", "inference-1", "inference-2"}
