"""In-memory mirror of one namespace's vectors and its exact nearest-neighbour search.

Rows live in one contiguous float32 matrix (grown by doubling), so a search is a single
matrix-vector product over every row: exact at any size (`bench/cache.py` measures it at 100k
rows). Removal swaps the last row into the hole, keeping the matrix dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
_INITIAL_CAPACITY = 64


@dataclass(frozen=True)
class Neighbour:
    """A row id and its cosine similarity to the query."""

    entry_hash: str
    similarity: float


class VectorMirror:
    """Unit-norm vectors keyed by entry hash, tagged with the Redis generation and version."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.generation: str | None = None
        self.version = 0
        self._matrix = np.zeros((_INITIAL_CAPACITY, dim), dtype=np.float32)
        self._hashes: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, entry_hash: object) -> bool:
        return entry_hash in self._rows

    def clear(self) -> None:
        """Drop every row (the matrix keeps its capacity)."""
        self._hashes.clear()
        self._rows.clear()

    def upsert(self, entry_hash: str, vector: Vector) -> None:
        """Add a row, or replace the vector of an existing one."""
        if vector.shape != (self.dim,):
            raise ValueError(f"vector shape {vector.shape}, expected ({self.dim},)")
        row = self._rows.get(entry_hash)
        if row is None:
            row = len(self._hashes)
            if row == self._matrix.shape[0]:
                grown = np.zeros((row * 2, self.dim), dtype=np.float32)
                grown[:row] = self._matrix
                self._matrix = grown
            self._hashes.append(entry_hash)
            self._rows[entry_hash] = row
        self._matrix[row] = vector

    def remove(self, entry_hash: str) -> bool:
        """Delete a row; returns whether it existed."""
        row = self._rows.pop(entry_hash, None)
        if row is None:
            return False
        last = len(self._hashes) - 1
        if row != last:
            moved = self._hashes[last]
            self._matrix[row] = self._matrix[last]
            self._hashes[row] = moved
            self._rows[moved] = row
        self._hashes.pop()
        return True

    def search(self, query: Vector, k: int, min_similarity: float) -> list[Neighbour]:
        """The k most similar rows with similarity >= min_similarity, best first."""
        n = len(self._hashes)
        if n == 0 or k <= 0:
            return []
        scores = self._matrix[:n] @ query
        top = np.argpartition(scores, n - k)[n - k :] if n > k else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Neighbour(self._hashes[i], float(scores[i])) for i in top if scores[i] >= min_similarity]
