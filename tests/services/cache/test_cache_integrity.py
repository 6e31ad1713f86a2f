"""What the cache serves is right: semantic hits need the same context."""

from __future__ import annotations

import hashlib
import json

import redis as redis_py
from llmesh.cache.v1 import cache_service_pb2 as pb
from prometheus_client import REGISTRY

from libs.testing.redis_server import RedisServer
from services.cache.codec import MAGIC
from services.cache.keys import parse_entry_id

from .conftest import Served
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
