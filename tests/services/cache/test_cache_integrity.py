"""What the cache serves is right: semantic hits need the same context, values of another type or
malformed vectors are misses (cleaned up and counted, never an outage), TTLs follow the policy."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import redis as redis_py
from llmesh.cache.v1 import cache_service_pb2 as pb
from prometheus_client import REGISTRY

from libs.testing.redis_server import RedisServer
from services.cache.codec import MAGIC
from services.cache.keys import Namespace, parse_entry_id
from services.cache.redis_store import RedisStore

from .conftest import Served, ServerFactory
from .test_cache_service import key, response, tenant

QUESTION = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def with_context(k: pb.CacheKey, context: str) -> pb.CacheKey:
    k.context_digest = context
    return k


async def test_semantic_hits_only_within_the_same_context(served: Served) -> None:
    _, stub = served
    t = tenant()
    # The same question asked under two system prompts (so with other tokens), answered twice.
    await stub.Store(
        pb.StoreRequest(key=with_context(key(t, [1], QUESTION), "french"), response=response("Paris"))
    )
    await stub.Store(
        pb.StoreRequest(key=with_context(key(t, [2], QUESTION), "pirate"), response=response("Arr"))
    )
    rejects = count("llmesh_cache_semantic_rejects_total", reason="context")
    for context, answer in (("french", "Paris"), ("pirate", "Arr")):
        hit = await stub.Lookup(
            pb.LookupRequest(key=with_context(key(t, [3], PARAPHRASE), context), semantic=True)
        )
        assert hit.hit and hit.kind == pb.HIT_KIND_SEMANTIC and hit.response.text == answer, context
    for context in ("", "another conversation"):
        miss = await stub.Lookup(
            pb.LookupRequest(key=with_context(key(t, [4], QUESTION), context), semantic=True)
        )
        assert not miss.hit, context
    # each miss turned both identical candidates down, and one of the hits the other's answer
    assert count("llmesh_cache_semantic_rejects_total", reason="context") == rejects + 5


def format_1_entry(text: str, semantic_text: str, sampling_digest: str) -> bytes:
    """An entry as the cache wrote it before it recorded contexts."""
    body = json.dumps(
        {
            "text": text,
            "finish_reason": 1,
            "usage": [3, 2, 5],
            "created_unix": 42,
            "sampling": sampling_digest,
            "semantic_text": semantic_text,
        }
    ).encode()
    return MAGIC + b"\x01" + hashlib.blake2b(body, digest_size=16).digest() + body


async def test_an_entry_without_a_recorded_context_serves_exact_hits_only(
    served: Served, redis: RedisServer
) -> None:
    _, stub = served
    t = tenant()
    k = key(t, [1, 2], QUESTION)
    entry_id = (await stub.Store(pb.StoreRequest(key=k, response=response("new")))).entry_id
    ns, h = parse_entry_id(entry_id)
    with redis_py.Redis.from_url(redis.url) as client:
        stored = json.loads(client.get(ns.entry_key(h))[20:])
        client.set(ns.entry_key(h), format_1_entry("old", QUESTION, stored["sampling"]))
    exact = await stub.Lookup(pb.LookupRequest(key=k))
    assert exact.hit and exact.response.text == "old"
    assert not (await stub.Lookup(pb.LookupRequest(key=key(t, [3], PARAPHRASE), semantic=True))).hit


async def test_a_value_of_another_type_is_a_miss_deleted_and_counted(
    served: Served, redis: RedisServer
) -> None:
    _, stub = served
    k = key(tenant(), [7, 1, 7])
    entry_id = (await stub.Store(pb.StoreRequest(key=k, response=response("fine")))).entry_id
    ns, h = parse_entry_id(entry_id)
    with redis_py.Redis.from_url(redis.url) as client:
        for foreign in (ns.entry_key(h), ns.lease_key(h)):
            client.delete(ns.entry_key(h), ns.lease_key(h))
            client.rpush(foreign, b"not an entry")
            before = count("llmesh_cache_corrupt_entries_total", kind="wrong_type")
            result = await stub.Lookup(pb.LookupRequest(key=k))
            # a miss that takes the lease, not "backend_unavailable": Redis is fine
            assert not result.hit and result.lease and not result.skipped_reason, foreign
            assert client.type(foreign) != b"list", foreign
            assert count("llmesh_cache_corrupt_entries_total", kind="wrong_type") == before + 1
            stored = await stub.Store(pb.StoreRequest(key=k, response=response("again"), lease=result.lease))
            assert stored.stored
            assert (await stub.Lookup(pb.LookupRequest(key=k))).response.text == "again"
    assert (await stub.GetStats(pb.GetStatsRequest())).backend_up


async def test_malformed_vectors_are_skipped_removed_and_counted(
    redis: RedisServer, make_server: ServerFactory
) -> None:
    t = tenant()
    store = RedisStore.from_url(redis.url, timeout_s=1.0, slow_timeout_s=5.0)
    client = redis_py.Redis.from_url(redis.url)
    try:
        async with make_server(redis.url) as (_, stub):
            stored = await stub.Store(pb.StoreRequest(key=key(t, [1], QUESTION), response=response("Paris")))
            ns, _ = parse_entry_id(stored.entry_id)
            ask = pb.LookupRequest(key=key(t, [2], PARAPHRASE), semantic=True)
            assert (await stub.Lookup(ask)).hit  # this replica's mirror is loaded

            # Read through the change log: a vector of the wrong size, and a record without fields.
            short = "b" * 64
            await store.add_vector(ns, short, b"\x00\x01\x02", 1000, "g")
            version = client.incr(f"{ns.prefix}ver")
            client.xadd(f"{ns.prefix}log", {"junk": "1"}, id=f"{version}-0")
            before = count("llmesh_cache_corrupt_vectors_total", source="log")
            hit = await stub.Lookup(ask)
            assert hit.hit and hit.response.text == "Paris"
            assert count("llmesh_cache_corrupt_vectors_total", source="log") == before + 2
            assert not client.hexists(f"{ns.prefix}vec", short)

            # Read in a full reload by a fresh replica: wrong size and not finite.
            nan = "c" * 64
            await store.add_vector(ns, short, b"\x00" * 12, 1000, "g")
            await store.add_vector(ns, nan, np.full(384, np.nan, dtype="<f4").tobytes(), 1000, "g")
        async with make_server(redis.url) as (_, fresh):
            before = count("llmesh_cache_corrupt_vectors_total", source="snapshot")
            hit = await fresh.Lookup(ask)
            assert hit.hit and hit.response.text == "Paris"
            assert count("llmesh_cache_corrupt_vectors_total", source="snapshot") == before + 2
            assert not client.hexists(f"{ns.prefix}vec", short) and not client.hexists(f"{ns.prefix}vec", nan)
    finally:
        client.close()
        await store.close()


async def test_a_malformed_vector_replaced_since_is_kept(
    redis: RedisServer, make_server: ServerFactory
) -> None:
    t = tenant()
    ns = Namespace(t, "smollm2", "1")
    store = RedisStore.from_url(redis.url, timeout_s=1.0, slow_timeout_s=5.0)
    try:
        async with make_server(redis.url) as (_, stub):
            await stub.Store(pb.StoreRequest(key=key(t, [1], QUESTION), response=response("Paris")))
            ask = pb.LookupRequest(key=key(t, [2], PARAPHRASE), semantic=True)
            assert (await stub.Lookup(ask)).hit
            good = np.zeros(384, dtype="<f4")
            good[0] = 1.0
            await store.add_vector(ns, "d" * 64, b"\x00", 1000, "g")
            await store.add_vector(ns, "d" * 64, good.tobytes(), 1000, "g")
            assert (await stub.Lookup(ask)).hit
            assert await store.remove_vector(ns, "d" * 64, only_if=good.tobytes())
    finally:
        await store.close()


async def test_ttl_follows_store_then_tenant_model_then_tenant_then_default(
    redis: RedisServer, make_server: ServerFactory
) -> None:
    t = tenant()
    overrides = {t: 2000, f"{t}/m2": 1000}
    async with make_server(redis.url, default_ttl_s=3000, ttl_overrides=overrides) as (_, stub):
        with redis_py.Redis.from_url(redis.url) as client:

            async def ttl_of(k: pb.CacheKey, ttl_s: int = 0) -> int:
                stored = await stub.Store(pb.StoreRequest(key=k, response=response("x"), ttl_s=ttl_s))
                ns, h = parse_entry_id(stored.entry_id)
                return int(client.ttl(ns.entry_key(h)))

            # Seconds elapse between the write and the TTL read: a margin, not a measurement.
            assert 1900 < await ttl_of(key(t, [1], model="m1")) <= 2000
            assert 900 < await ttl_of(key(t, [2], model="m2")) <= 1000
            assert 2900 < await ttl_of(key(tenant(), [3], model="m2")) <= 3000
            assert 400 < await ttl_of(key(t, [4], model="m2"), ttl_s=500) <= 500
