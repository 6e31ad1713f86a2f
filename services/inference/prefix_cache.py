"""Prompt-prefix KV cache: the keys and values of prompt prefixes kept in fixed-size token blocks.

A prompt's first ``n * block_size`` tokens are cut into ``n`` blocks. Block ``k`` is keyed by a
chain digest that commits to every token up to its end::

    digest[k] = BLAKE2b-128(digest[k-1] || little-endian int32 token ids of block k)   (digest[-1] = b"")

so one digest names a whole prefix, and two prompts share block ``k`` exactly when they share
their first ``(k + 1) * block_size`` tokens. The first 8 bytes of a digest, read as a
little-endian unsigned integer, are what a replica reports in ``GetLoadResponse`` (the router
computes the same digests from the prompt and prefers the replica holding the longest prefix).

The cache is bounded in blocks and evicts the least recently used block first. A hit touches its
blocks from the deepest to the first, so the first blocks of a chain are always more recent than
its later ones: eviction trims chains from their ends and never strands a block whose parent is
gone. Keys and values are causal (a position's KV depends only on the tokens up to it), so the KV
of a block computed while prefilling a longer prompt is exactly the KV of the prefix alone.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DIGEST_BYTES = 16
WIRE_DIGEST_BYTES = 8


def chain_digests(token_ids: Sequence[int], block_size: int, max_blocks: int | None = None) -> list[bytes]:
    """Chain digests of the full blocks of ``token_ids`` (at most ``max_blocks``)."""
    count = len(token_ids) // block_size
    if max_blocks is not None:
        count = min(count, max_blocks)
    if count <= 0:
        return []
    data = np.asarray(token_ids[: count * block_size], dtype="<i4").tobytes()
    step = block_size * 4
    out: list[bytes] = []
    parent = b""
    for k in range(count):
        parent = hashlib.blake2b(parent + data[k * step : (k + 1) * step], digest_size=DIGEST_BYTES).digest()
        out.append(parent)
    return out


def wire_digest(digest: bytes) -> int:
    """The 64-bit form of a chain digest reported to routers."""
    return int.from_bytes(digest[:WIRE_DIGEST_BYTES], "little")


@dataclass(frozen=True)
class PrefixBlock:
    """The KV of one block: ``keys``/``values`` are [layers, kv_heads, block_size, head_size]."""

    digest: bytes
    parent: bytes
    tokens: tuple[int, ...]
    keys: np.ndarray
    values: np.ndarray


# Reads the KV of positions [start, stop) of the sequence being cached: (keys, values).
KvReader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


class PrefixCache:
    """LRU cache of prompt-prefix KV blocks, bounded to ``max_blocks`` blocks.

    The engine thread looks up and inserts; ``wire_digests`` may be called from any thread.
    """

    def __init__(self, block_size: int, max_blocks: int) -> None:
        if block_size < 1 or max_blocks < 1:
            raise ValueError("block_size and max_blocks must be >= 1")
        self.block_size = block_size
        self.max_blocks = max_blocks
        self._blocks: collections.OrderedDict[bytes, PrefixBlock] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def tokens(self) -> int:
        """Tokens held (blocks times block size)."""
        return len(self._blocks) * self.block_size

    def lookup(self, token_ids: Sequence[int]) -> list[PrefixBlock]:
        """The longest cached prefix of ``token_ids`` that leaves at least one token to prefill."""
        reusable = (len(token_ids) - 1) // self.block_size
        digests = chain_digests(token_ids, self.block_size, reusable)
        found: list[PrefixBlock] = []
        with self._lock:
            parent = b""
            for k, digest in enumerate(digests):
                block = self._blocks.get(digest)
                start = k * self.block_size
                if (
                    block is None
                    or block.parent != parent
                    or block.tokens != tuple(token_ids[start : start + self.block_size])
                ):
                    break
                found.append(block)
                parent = digest
            for block in reversed(found):
                self._blocks.move_to_end(block.digest)
        return found

    def insert(self, token_ids: Sequence[int], read: KvReader) -> int:
        """Cache the full blocks of ``token_ids`` (whose KV ``read`` returns); return blocks added."""
        digests = chain_digests(token_ids, self.block_size, self.max_blocks)
        with self._lock:
            missing = [k for k, d in enumerate(digests) if d not in self._blocks]
        added: list[PrefixBlock] = []
        for k in missing:
            start = k * self.block_size
            keys, values = read(start, start + self.block_size)
            added.append(
                PrefixBlock(
                    digest=digests[k],
                    parent=digests[k - 1] if k else b"",
                    tokens=tuple(token_ids[start : start + self.block_size]),
                    keys=keys,
                    values=values,
                )
            )
        with self._lock:
            for block in added:
                self._blocks[block.digest] = block
            for digest in reversed(digests):
                if digest in self._blocks:
                    self._blocks.move_to_end(digest)
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)
        return len(added)

    def wire_digests(self, limit: int) -> list[int]:
        """64-bit digests of up to ``limit`` cached blocks, most recently used first."""
        with self._lock:
            newest = list(reversed(self._blocks))[: max(0, limit)]
        return [wire_digest(d) for d in newest]
