"""Semantic index: per-namespace vector mirrors kept in step with Redis, plus hit guards.

Each replica keeps an in-memory `VectorMirror` per namespace (least recently used ones are
dropped). Before a search the mirror reads the namespace's change log after its own version (one
round trip, usually empty); a generation change (the namespace was wiped) or a gap in the log
(it was trimmed past us) triggers a full reload from the `vec` hash, which runs as a task so a
slow reload of a big namespace never blocks lookups beyond their own budget.

A malformed record (a vector of the wrong size or with non-finite values, a log record missing
its fields) never fails a lookup: it is skipped, counted in `llmesh_cache_corrupt_vectors_total`,
and its vector removed from Redis unless a valid one has replaced it since.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from services.cache import metrics
from services.cache.keys import Namespace
from services.cache.redis_store import BackendError, LogEntry, RedisStore
from services.cache.vectors import Neighbour, Vector, VectorMirror

log = logging.getLogger(__name__)

_LOG_BATCH = 2000
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def numbers_in(text: str) -> tuple[str, ...]:
    """The digit groups of a text in order ("1,000" and "1000" compare equal)."""
    return tuple(n.replace(",", "") for n in _NUMBER.findall(text))


def numbers_agree(a: str, b: str) -> bool:
    """Whether two prompts mention the same numbers in the same order.

    Embeddings place "convert 30 USD to EUR" and "convert 40 USD to EUR" very close; answering
    one with the other is a wrong answer, not a near one, so a semantic hit needs equal numbers.
    """
    return numbers_in(a) == numbers_in(b)


_WORD = re.compile(r"[a-z0-9$%']+")
# Function words ignored when comparing the content of two prompts.
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "do",
        "does",
        "did",
        "i",
        "me",
        "my",
        "you",
        "your",
        "we",
        "our",
        "it",
        "its",
        "this",
        "that",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "how",
        "what",
        "what's",
        "whats",
        "which",
        "who",
        "why",
        "when",
        "where",
        "can",
        "could",
        "should",
        "would",
        "will",
        "please",
        "tell",
        "give",
        "show",
        "explain",
        "some",
        "about",
        "into",
        "as",
    ]
)


def content_words(text: str) -> list[str]:
    """Lower-cased content words in order, plural "s" stripped ("APIs" == "API")."""
    words = (w.strip("'") for w in _WORD.findall(text.lower()))
    return [
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in words
        if w and w not in _STOPWORDS
    ]


def single_swap(a: str, b: str) -> bool:
    """Whether two prompts differ by exactly one swapped content word, or only in word order.

    "pivot table in Excel" vs "... in Google Sheets", "Tuesday" vs "Thursday", "Boston to
    Chicago" vs "Chicago to Boston": near-identical embeddings, different questions. Real
    paraphrases reword more than one word, or only add or drop words.
    """
    wa, wb = content_words(a), content_words(b)
    only_a, only_b = set(wa) - set(wb), set(wb) - set(wa)
    if len(only_a) == 1 and len(only_b) == 1:
        return True
    return not only_a and not only_b and wa != wb and sorted(wa) == sorted(wb)


def guard_rejects(stored: str, asked: str) -> str:
    """Why a semantic candidate must not answer this prompt ("" when it may)."""
    if not numbers_agree(stored, asked):
        return "numbers"
    if single_swap(stored, asked):
        return "swap"
    return ""


class IndexLoading(Exception):
    """The namespace mirror is being reloaded and was not ready within the lookup's budget."""


class SemanticIndex:
    """Nearest-neighbour search over the vectors of each namespace, synced from Redis."""

    def __init__(
        self,
        store: RedisStore,
        dim: int,
        max_entries_per_namespace: int,
        max_namespaces: int = 256,
        reload_timeout_s: float = 30.0,
        on_reload: Callable[[Namespace, int], None] | None = None,
    ) -> None:
        self._store = store
        self._dim = dim
        self._max_entries = max_entries_per_namespace
        self._max_namespaces = max_namespaces
        self._reload_timeout_s = reload_timeout_s
        self._on_reload = on_reload
        self._mirrors: OrderedDict[Namespace, VectorMirror] = OrderedDict()
        self._locks: dict[Namespace, asyncio.Lock] = {}
        self._reloads: dict[Namespace, asyncio.Task[None]] = {}
        # Used when this replica creates a namespace's generation token.
        self._generation = secrets.token_hex(8)

    def mirror_size(self, ns: Namespace) -> int:
        """Rows in this replica's mirror of a namespace (0 when not loaded)."""
        mirror = self._mirrors.get(ns)
        return len(mirror) if mirror else 0

    async def add(self, ns: Namespace, entry_hash: str, vector: Vector) -> None:
        """Write a vector to Redis; mirrors (this one included) pick it up from the log."""
        blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        await self._store.add_vector(ns, entry_hash, blob, self._max_entries, self._generation)

    async def remove(self, ns: Namespace, entry_hash: str) -> None:
        """Remove a vector from Redis and from this replica's mirror."""
        await self._store.remove_vector(ns, entry_hash)
        mirror = self._mirrors.get(ns)
        if mirror is not None:
            mirror.remove(entry_hash)

    def forget(self, predicate: Callable[[Namespace], bool]) -> None:
        """Drop local mirrors of namespaces that were wiped (they reload on next use)."""
        for ns in [ns for ns in self._mirrors if predicate(ns)]:
            del self._mirrors[ns]

    async def search(
        self, ns: Namespace, query: Vector, k: int, min_similarity: float, budget_s: float
    ) -> list[Neighbour]:
        """Sync the namespace mirror, then return its k nearest rows above min_similarity.

        Raises IndexLoading when a full reload does not finish within budget_s, and
        BackendError when Redis fails.
        """
        mirror = await self._synced(ns, budget_s)
        return mirror.search(query, k, min_similarity)

    async def _synced(self, ns: Namespace, budget_s: float) -> VectorMirror:
        lock = self._locks.setdefault(ns, asyncio.Lock())
        async with asyncio.timeout(budget_s):
            async with lock:
                mirror = self._mirrors.get(ns)
                if mirror is not None:
                    self._mirrors.move_to_end(ns)
                    if await self._catch_up(ns, mirror, budget_s):
                        return mirror
        # Unknown namespace, new generation or a gap in the log: reload in a task.
        task = self._reloads.get(ns)
        if task is None or task.done():
            task = asyncio.create_task(self._reload(ns), name=f"cache-reload-{ns.prefix}")
            self._reloads[ns] = task
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=budget_s)
        except TimeoutError as err:
            raise IndexLoading(f"semantic index of {ns.tenant}/{ns.model} is loading") from err
        return self._mirrors[ns]

    def _vector(self, blob: bytes) -> Vector | None:
        """The vector a blob holds, or None when it is not one of this index's vectors."""
        if len(blob) != 4 * self._dim:
            return None
        vector = np.frombuffer(blob, dtype="<f4")
        return vector if bool(np.isfinite(vector).all()) else None

    async def _catch_up(self, ns: Namespace, mirror: VectorMirror, budget_s: float) -> bool:
        """Apply the log after mirror.version; False when a full reload is needed."""
        while True:
            generation, entries = await self._store.read_log(ns, mirror.version, _LOG_BATCH, budget_s)
            if generation != mirror.generation:
                return False
            if not entries:
                return True
            applied, malformed = self._apply(mirror, entries)
            await self._drop_malformed(ns, "log", malformed)
            if not applied:
                return False
            if len(entries) < _LOG_BATCH:
                return True

    def _apply(self, mirror: VectorMirror, entries: list[LogEntry]) -> tuple[bool, list[tuple[str, bytes]]]:
        """Apply log records in order: (False when there is a gap, the malformed records seen)."""
        malformed: list[tuple[str, bytes]] = []
        for entry in entries:
            if entry.version != mirror.version + 1:
                return False, malformed
            if entry.op == "d" and entry.entry_hash:
                mirror.remove(entry.entry_hash)
            elif entry.op == "a" and entry.entry_hash:
                vector = self._vector(entry.vector)
                if vector is not None:
                    mirror.upsert(entry.entry_hash, vector)
                else:
                    # What Redis now holds for this hash is not a usable vector: no row for it.
                    mirror.remove(entry.entry_hash)
                    malformed.append((entry.entry_hash, entry.vector))
            else:
                malformed.append(("", b""))  # a record missing its fields: counted, skipped
            mirror.version = entry.version
        return True, malformed

    async def _drop_malformed(self, ns: Namespace, source: str, malformed: list[tuple[str, bytes]]) -> None:
        """Count malformed records and remove their vectors (unless replaced since)."""
        if not malformed:
            return
        metrics.CORRUPT_VECTORS.labels(source).inc(len(malformed))
        log.warning("skipping %d malformed vector record(s) of %s (%s)", len(malformed), ns.prefix, source)
        for entry_hash, blob in malformed:
            if not entry_hash:
                continue
            try:
                await self._store.remove_vector(ns, entry_hash, only_if=blob)
            except BackendError as err:
                # It stays skipped on every read until a later removal succeeds.
                log.info("could not remove malformed vector %s: %s", entry_hash, err)

    async def _reload(self, ns: Namespace) -> None:
        snapshot = await self._store.snapshot(ns, self._reload_timeout_s)
        mirror = VectorMirror(self._dim)
        malformed: list[tuple[str, bytes]] = []
        for entry_hash, blob in snapshot.vectors.items():
            vector = self._vector(blob)
            if vector is not None:
                mirror.upsert(entry_hash, vector)
            else:
                malformed.append((entry_hash, blob))
        await self._drop_malformed(ns, "snapshot", malformed)
        mirror.generation = snapshot.generation
        mirror.version = snapshot.version
        self._mirrors[ns] = mirror
        self._mirrors.move_to_end(ns)
        while len(self._mirrors) > self._max_namespaces:
            evicted, _ = self._mirrors.popitem(last=False)
            self._locks.pop(evicted, None)
        if self._on_reload is not None:
            self._on_reload(ns, len(mirror))
