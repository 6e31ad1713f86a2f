"""Prometheus metrics of the cache service (registered once per process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from libs.runtime.metrics import LATENCY_BUCKETS

LOOKUPS = Counter(
    "llmesh_cache_lookups_total",
    "Lookups by outcome: exact, semantic, miss, or skipped (bypass, nondeterministic, backend).",
    ["outcome"],
)
HITS = Counter("llmesh_cache_hits_total", "Cache hits by kind.", ["kind"])
MISSES = Counter("llmesh_cache_misses_total", "Lookups that found nothing to serve.")
STORES = Counter("llmesh_cache_stores_total", "Store calls by result: stored, skipped or failed.", ["result"])
BACKEND_ERRORS = Counter(
    "llmesh_cache_backend_errors_total", "Redis failures or timeouts, by operation.", ["op"]
)
CORRUPT_ENTRIES = Counter(
    "llmesh_cache_corrupt_entries_total",
    "Values where an entry or lease should be that were deleted and answered as a miss, by kind: "
    "undecodable (not a valid entry) or wrong_type (a key of another Redis type).",
    ["kind"],
)
CORRUPT_VECTORS = Counter(
    "llmesh_cache_corrupt_vectors_total",
    "Malformed semantic index records skipped (and their vectors removed), by where they were read: "
    "log (change log) or snapshot (full reload).",
    ["source"],
)
LEASES = Counter(
    "llmesh_cache_leases_total",
    "Single-flight outcomes: granted, takeover (after expiry), waited_hit, wait_timeout, busy.",
    ["outcome"],
)
SEMANTIC_REJECTS = Counter(
    "llmesh_cache_semantic_rejects_total",
    "Semantic candidates above the threshold that were not served, by reason: expired, sampling, "
    "context (another system prompt or conversation), numbers, swap.",
    ["reason"],
)
INVALIDATED = Counter("llmesh_cache_invalidated_total", "Entries deleted by Invalidate.", ["scope"])
LOOKUP_LATENCY = Histogram(
    "llmesh_cache_lookup_seconds",
    "Lookup latency inside the service, by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
SIMILARITY = Histogram(
    "llmesh_cache_semantic_similarity",
    "Cosine similarity of the best semantic candidate of each semantic lookup.",
    buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0),
)
