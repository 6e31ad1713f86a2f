"""`ResponseCache`: exact and semantic lookups, single flight, stores and invalidation.

Failure policy: the cache is an optimisation, so Lookup and Store never fail because of Redis.
A Redis error or timeout turns a Lookup into a miss with `skipped_reason="backend_unavailable"`
and a Store into `stored=False`; both count a backend error, bump a metric and log a warning
(at most one line per operation every few seconds). Invalidate does raise `Unavailable`: an
invalidation that silently did nothing would keep serving answers someone asked to remove.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from libs.runtime.errors import InvalidArgument, Unavailable
from services.cache import metrics
from services.cache.codec import CorruptEntry, StoredResponse, decode, encode
from services.cache.keys import (
    CacheKey,
    CacheMode,
    Namespace,
    NormalSampling,
    entry_hash,
    normalise,
    parse_entry_id,
    tenant_pattern,
)
from services.cache.redis_store import BackendError, BackendTimeout, RedisStore, WrongType
from services.cache.semantic import IndexLoading, SemanticIndex, guard_rejects

log = logging.getLogger(__name__)

_WARN_EVERY_S = 5.0
_POLL_FIRST_S = 0.002
_POLL_MAX_S = 0.05
# Failed polls in a row after which a single-flight waiter stops waiting (Redis is down, not slow).
_WAIT_FAILURES = 3
# Semantic candidates above the threshold that are checked (sampling, numbers) before giving up.
_CANDIDATES = 8
# Reads of an entry and its lease per lookup: a corrupt or foreign value is deleted and read again.
_READ_ATTEMPTS = 3
_ADMIN_TIMEOUT_S = 30.0


class Embedder(Protocol):
    """What the cache needs from `libs.embedding.SentenceEmbedder`."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class HitKind(enum.IntEnum):
    """How a lookup was answered (values match llmesh.cache.v1.HitKind)."""

    NONE = 0
    EXACT = 1
    SEMANTIC = 2


@dataclass(frozen=True)
class CachePolicy:
    """TTLs, thresholds and limits; overrides are keyed by "tenant" or "tenant/model"."""

    default_ttl_s: int = 3600
    ttl_overrides: Mapping[str, int] = field(default_factory=dict)
    semantic_threshold: float = 0.82
    threshold_overrides: Mapping[str, float] = field(default_factory=dict)
    lease_ms: int = 10_000
    max_entries_per_namespace: int = 200_000

    def ttl_for(self, tenant: str, model: str) -> int:
        """TTL of a new entry: tenant/model override, tenant override, then the default."""
        return self.ttl_overrides.get(f"{tenant}/{model}", self.ttl_overrides.get(tenant, self.default_ttl_s))

    def threshold_for(self, tenant: str, model: str) -> float:
        """Semantic threshold of a namespace, resolved like `ttl_for`."""
        default = self.threshold_overrides.get(tenant, self.semantic_threshold)
        return self.threshold_overrides.get(f"{tenant}/{model}", default)


@dataclass(frozen=True)
class LookupResult:
    """What Lookup answers."""

    hit: bool = False
    kind: HitKind = HitKind.NONE
    response: StoredResponse | None = None
    similarity: float = 0.0
    entry_id: str = ""
    lease: str = ""
    skipped_reason: str = ""


@dataclass(frozen=True)
class StoreResult:
    """What Store answers."""

    stored: bool
    entry_id: str = ""


@dataclass
class CacheStats:
    """Counters since start (GetStats)."""

    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    stores: int = 0
    backend_errors: int = 0


class _Throttle:
    """Allows one log line per key every `every_s` seconds, counting what it suppressed."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet, else how many lines were suppressed since the last one."""
        now = time.monotonic()
        if now - self._last.get(key, -self._every_s) < self._every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class ResponseCache:
    """The cache's domain logic over a `RedisStore`, a `SemanticIndex` and an embedder."""

    def __init__(
        self,
        store: RedisStore,
        index: SemanticIndex | None,
        embedder: Embedder | None,
        policy: CachePolicy,
    ) -> None:
        self._store = store
        self._index = index
        self._embedder = embedder
        self.policy = policy
        self.stats = CacheStats()
        self.backend_up = True
        self._throttle = _Throttle(_WARN_EVERY_S)
        self._wakeups: dict[tuple[Namespace, str], asyncio.Event] = {}
        self._waiting: dict[tuple[Namespace, str], int] = {}
        self._background: set[asyncio.Task[object]] = set()

    def attach_embedder(self, embedder: Embedder) -> None:
        """Enable semantic lookups once the embedder is loaded (a start hook calls this)."""
        self._embedder = embedder

    # ---------------------------------------------------------------- lookup

    async def lookup(
        self,
        key: CacheKey,
        mode: CacheMode = CacheMode.AUTO,
        semantic: bool = False,
        wait_ms: int = 0,
        similarity_threshold: float = 0.0,
        deadline_s: float | None = None,
    ) -> LookupResult:
        """Exact, then semantic lookup; on a miss hand out (or wait for) the single-flight lease.

        deadline_s is the time the caller has left; nothing here takes longer than that.
        """
        started = time.monotonic()
        result = await self._lookup(key, mode, semantic, wait_ms, similarity_threshold, started, deadline_s)
        outcome = {HitKind.EXACT: "exact", HitKind.SEMANTIC: "semantic"}.get(result.kind, "miss")
        if result.skipped_reason and not result.hit:
            outcome = "skipped"
        if result.kind == HitKind.EXACT:
            self.stats.exact_hits += 1
        elif result.kind == HitKind.SEMANTIC:
            self.stats.semantic_hits += 1
        else:
            self.stats.misses += 1
            metrics.MISSES.inc()
        if result.hit:
            metrics.HITS.labels(outcome).inc()
        metrics.LOOKUPS.labels(outcome).inc()
        metrics.LOOKUP_LATENCY.labels(outcome).observe(time.monotonic() - started)
        return result

    async def _lookup(
        self,
        key: CacheKey,
        mode: CacheMode,
        semantic: bool,
        wait_ms: int,
        threshold: float,
        started: float,
        deadline_s: float | None,
    ) -> LookupResult:
        if mode == CacheMode.BYPASS:
            return LookupResult(skipped_reason="bypass")
        key.validate()
        if not 0.0 <= threshold <= 1.0:
            raise InvalidArgument(f"similarity_threshold must be in (0, 1], got {threshold}")
        sampling = normalise(key.sampling)
        if mode != CacheMode.FORCE and not sampling.deterministic:
            return LookupResult(skipped_reason="nondeterministic")
        end = started + (deadline_s if deadline_s is not None else 3600.0)
        ns = key.namespace
        h = entry_hash(key, sampling)
        token = secrets.token_hex(16)
        leased = False
        try:
            value, leased = await self._get_or_lease(ns, h, token, end)
            if value is not None:
                return LookupResult(True, HitKind.EXACT, value, 1.0, ns.entry_id(h))
            if semantic and key.semantic_text:
                found = await self._semantic(key, sampling, threshold, end)
                if found is not None:
                    if leased:
                        self._spawn(self._store.release_lease(ns, h, token))
                    return found
            if leased:
                metrics.LEASES.labels("granted").inc()
                return LookupResult(entry_id=ns.entry_id(h), lease=token)
            if wait_ms <= 0:
                metrics.LEASES.labels("busy").inc()
                return LookupResult(entry_id=ns.entry_id(h))
            return await self._wait_for_leader(ns, h, token, min(end, time.monotonic() + wait_ms / 1000))
        except (BackendError, TimeoutError) as err:
            self._backend_failed("lookup", err)
            return LookupResult(skipped_reason="backend_unavailable")

    def _budget(self, end: float) -> float:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("lookup deadline reached")
        return min(self._store.timeout_s, left)

    async def _get_or_lease(
        self, ns: Namespace, h: str, token: str, end: float
    ) -> tuple[StoredResponse | None, bool]:
        for _attempt in range(_READ_ATTEMPTS):
            try:
                blob, leased = await self._lease_call(ns, h, token, end)
            except WrongType as err:
                # Not a Redis outage: someone else's key sits where ours should. It is a miss,
                # and it goes, so the next Store can write the entry.
                self.backend_up = True
                metrics.CORRUPT_ENTRIES.labels("wrong_type").inc()
                log.warning("deleting a foreign value: %s", err)
                await self._store.delete(err.key)
                continue
            self.backend_up = True
            if blob is None:
                return None, leased
            entry = await self._decode_or_drop(ns, h, blob)
            if entry is not None:
                return entry, False
        return None, False

    async def _lease_call(self, ns: Namespace, h: str, token: str, end: float) -> tuple[bytes | None, bool]:
        """get_or_lease, asked once more when Redis was only slow and the caller has time left.

        A lookup that times out becomes a miss that runs the model beside the leader, so one slow
        round trip (a connection opened under a burst, a busy event loop) would break single
        flight. The script counts a lease this token already holds as granted, so a retry after a
        call that timed out but did run cannot strand the lease.
        """
        try:
            return await self._store.get_or_lease(ns, h, token, self.policy.lease_ms, self._budget(end))
        except BackendTimeout as err:
            metrics.BACKEND_ERRORS.labels("lookup_retried").inc()
            log.info("redis lookup timed out; asking once more: %s", err)
            budget = min(2 * self._store.timeout_s, max(end - time.monotonic(), 0.0))
            if budget <= 0:
                raise
            return await self._store.get_or_lease(ns, h, token, self.policy.lease_ms, budget)

    async def _decode_or_drop(self, ns: Namespace, h: str, blob: bytes) -> StoredResponse | None:
        try:
            return decode(blob)
        except CorruptEntry as err:
            metrics.CORRUPT_ENTRIES.labels("undecodable").inc()
            log.warning("deleting corrupt cache entry %s: %s", ns.entry_id(h), err)
            await self._store.delete(ns.entry_key(h))
            return None

    async def _wait_for_leader(self, ns: Namespace, h: str, token: str, wait_end: float) -> LookupResult:
        """Poll for the leader's Store (woken at once when it lands on this replica)."""
        slot = (ns, h)
        event = self._wakeups.setdefault(slot, asyncio.Event())
        self._waiting[slot] = self._waiting.get(slot, 0) + 1
        interval = _POLL_FIRST_S
        failures = 0
        try:
            while (left := wait_end - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(event.wait(), timeout=min(interval, left))
                except TimeoutError:
                    interval = min(interval * 2, _POLL_MAX_S)
                try:
                    value, leased = await self._get_or_lease(ns, h, token, wait_end)
                except BackendError as err:
                    # A waiter keeps waiting through a slow poll; only a Redis that keeps
                    # failing ends the wait (the caller then runs the model itself).
                    failures += 1
                    if failures >= _WAIT_FAILURES:
                        raise
                    log.info("single-flight poll failed (%d in a row): %s", failures, err)
                    continue
                failures = 0
                if value is not None:
                    metrics.LEASES.labels("waited_hit").inc()
                    return LookupResult(True, HitKind.EXACT, value, 1.0, ns.entry_id(h))
                if leased:
                    metrics.LEASES.labels("takeover").inc()
                    return LookupResult(entry_id=ns.entry_id(h), lease=token)
        finally:
            self._waiting[slot] -= 1
            if self._waiting[slot] == 0:
                del self._waiting[slot]
                if self._wakeups.get(slot) is event:
                    del self._wakeups[slot]
        metrics.LEASES.labels("wait_timeout").inc()
        return LookupResult(entry_id=ns.entry_id(h), skipped_reason="lease_wait_timeout")

    async def _semantic(
        self, key: CacheKey, sampling: NormalSampling, threshold: float, end: float
    ) -> LookupResult | None:
        if self._index is None or self._embedder is None:
            return None
        ns = key.namespace
        threshold = threshold or self.policy.threshold_for(key.tenant, key.model)
        query = (await asyncio.to_thread(self._embedder.embed, [key.semantic_text]))[0]
        try:
            neighbours = await self._index.search(
                ns, query, _CANDIDATES, -1.0, max(0.0, end - time.monotonic())
            )
        except IndexLoading as err:
            log.info("%s", err)
            return None
        if neighbours:
            metrics.SIMILARITY.observe(neighbours[0].similarity)
        candidates = [n for n in neighbours if n.similarity >= threshold]
        blobs = await self._store.mget([ns.entry_key(c.entry_hash) for c in candidates], self._budget(end))
        digest = sampling.digest()
        for candidate, blob in zip(candidates, blobs, strict=True):
            entry = None if blob is None else await self._decode_or_drop(ns, candidate.entry_hash, blob)
            if entry is None:
                # Expired or corrupt: the vector must go too.
                metrics.SEMANTIC_REJECTS.labels("expired").inc()
                self._spawn(self._index.remove(ns, candidate.entry_hash))
                continue
            if entry.sampling_digest != digest:
                metrics.SEMANTIC_REJECTS.labels("sampling").inc()
                continue
            if entry.context_digest is None or entry.context_digest != key.context_digest:
                # Same question, other system prompt or conversation: not the same question.
                metrics.SEMANTIC_REJECTS.labels("context").inc()
                continue
            rejected = guard_rejects(entry.semantic_text, key.semantic_text)
            if rejected:
                metrics.SEMANTIC_REJECTS.labels(rejected).inc()
                continue
            return LookupResult(
                True, HitKind.SEMANTIC, entry, candidate.similarity, ns.entry_id(candidate.entry_hash)
            )
        return None

    # ----------------------------------------------------------------- store

    async def store(
        self,
        key: CacheKey,
        response: StoredResponse,
        mode: CacheMode = CacheMode.AUTO,
        lease: str = "",
        ttl_s: int = 0,
    ) -> StoreResult:
        """Write a response (and its vector when it has semantic_text); releases the lease."""
        if mode == CacheMode.BYPASS:
            metrics.STORES.labels("skipped").inc()
            return StoreResult(False)
        key.validate()
        if ttl_s < 0:
            raise InvalidArgument(f"ttl_s must not be negative, got {ttl_s}")
        sampling = normalise(key.sampling)
        ns = key.namespace
        h = entry_hash(key, sampling)
        try:
            if mode != CacheMode.FORCE and not sampling.deterministic:
                metrics.STORES.labels("skipped").inc()
                if lease:
                    await self._store.release_lease(ns, h, lease)
                return StoreResult(False, ns.entry_id(h))
            entry = replace(
                response,
                sampling_digest=sampling.digest(),
                semantic_text=key.semantic_text,
                context_digest=key.context_digest,
            )
            ttl = ttl_s or self.policy.ttl_for(key.tenant, key.model)
            await self._store.put_entry(ns, h, encode(entry), ttl, lease)
            self.backend_up = True
            if key.semantic_text and self._index is not None and self._embedder is not None:
                vector = (await asyncio.to_thread(self._embedder.embed, [key.semantic_text]))[0]
                await self._index.add(ns, h, vector)
        except (BackendError, TimeoutError) as err:
            self._backend_failed("store", err)
            metrics.STORES.labels("failed").inc()
            return StoreResult(False, ns.entry_id(h))
        finally:
            event = self._wakeups.pop((ns, h), None)
            if event is not None:
                event.set()
        self.stats.stores += 1
        metrics.STORES.labels("stored").inc()
        return StoreResult(True, ns.entry_id(h))

    # ------------------------------------------------------------ invalidate

    async def invalidate(self, entry_id: str = "", tenant: str = "", model: str = "") -> int:
        """Delete one entry, a tenant's entries, or a tenant's entries of one model."""
        try:
            if entry_id:
                ns, h = parse_entry_id(entry_id)
                existed = await self._store.delete(ns.entry_key(h), ns.lease_key(h))
                vector_existed = False
                if self._index is not None:
                    vector_existed = await self._store.remove_vector(ns, h)
                    await self._index.remove(ns, h)
                deleted = 1 if existed or vector_existed else 0
                metrics.INVALIDATED.labels("entry").inc(deleted)
                return deleted
            if not tenant:
                raise InvalidArgument("set entry_id, or tenant (optionally with model)")
            keys = await self._store.scan_keys(tenant_pattern(tenant, model), _ADMIN_TIMEOUT_S)
            hashes = {k.rsplit(":", 1)[1] for k in keys if k.rsplit(":", 2)[1] == "e"}
            for vec_key in (k for k in keys if k.endswith(":vec")):
                hashes.update(await self._store.hkeys(vec_key, _ADMIN_TIMEOUT_S))
            await self._store.delete_many(keys, _ADMIN_TIMEOUT_S)
        except (BackendError, TimeoutError) as err:
            self._backend_failed("invalidate", err)
            raise Unavailable(
                f"cache backend unavailable: {err}", reason="CACHE_BACKEND_UNAVAILABLE"
            ) from err
        if self._index is not None:
            self._index.forget(lambda ns: ns.tenant == tenant and (not model or ns.model == model))
        metrics.INVALIDATED.labels("model" if model else "tenant").inc(len(hashes))
        return len(hashes)

    # ---------------------------------------------------------------- health

    async def check_backend(self, timeout_s: float | None = None) -> bool:
        """PING Redis; updates and returns `backend_up`."""
        try:
            await self._store.ping(timeout_s)
            self.backend_up = True
        except BackendError as err:
            self._backend_failed("ping", err)
        return self.backend_up

    async def drain(self) -> None:
        """Wait for background clean-ups (lease releases, expired-vector removal)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, work: Awaitable[object]) -> None:
        async def run() -> object:
            try:
                return await work
            except (BackendError, TimeoutError) as err:
                self._backend_failed("cleanup", err)
                return None

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _backend_failed(self, op: str, err: BaseException) -> None:
        self.backend_up = False
        if op == "lookup":
            self.stats.backend_errors += 1
        metrics.BACKEND_ERRORS.labels(op).inc()
        suppressed = self._throttle.allow(op)
        if suppressed is not None:
            log.warning(
                "cache %s degraded: redis unavailable (%s); %d similar warnings suppressed",
                op,
                err or type(err).__name__,
                suppressed,
            )
