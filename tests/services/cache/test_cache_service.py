"""The cache service over gRPC on a real Redis: exact, single flight, semantic, invalidation."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import grpc
import pytest
import redis as redis_py
from llmesh.cache.v1 import cache_service_pb2 as pb
from llmesh.common.v1 import generation_pb2 as common

from libs.testing.redis_server import RedisServer
from services.cache.keys import parse_entry_id

from .conftest import Served, ServerFactory

_counter = itertools.count()


def tenant() -> str:
    """A tenant name no other test uses, so tests share one Redis without interfering."""
    return f"t{next(_counter)}-{uuid.uuid4().hex[:6]}"


def key(
    t: str, tokens: list[int], text: str = "", model: str = "smollm2", version: str = "1", **sampling: object
) -> pb.CacheKey:
    return pb.CacheKey(
        tenant=t,
        model=model,
        model_version=version,
        prompt_token_ids=tokens,
        semantic_text=text,
        sampling=common.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def response(text: str) -> pb.CachedResponse:
    usage = common.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    return pb.CachedResponse(text=text, finish_reason=common.FINISH_REASON_STOP, usage=usage, created_unix=42)


async def test_exact_miss_store_hit(served: Served) -> None:
    _, stub = served
    k = key(tenant(), [1, 2, 3])
    miss = await stub.Lookup(pb.LookupRequest(key=k))
    assert not miss.hit and miss.lease and not miss.skipped_reason
    stored = await stub.Store(pb.StoreRequest(key=k, response=response("Paris"), lease=miss.lease))
    assert stored.stored and stored.entry_id == miss.entry_id
    hit = await stub.Lookup(pb.LookupRequest(key=k))
    assert hit.hit and hit.kind == pb.HIT_KIND_EXACT and hit.entry_id == stored.entry_id
    assert hit.response.text == "Paris" and hit.response.usage.total_tokens == 5
    assert hit.response.finish_reason == common.FINISH_REASON_STOP and hit.response.created_unix == 42


async def test_ttl_expiry(served: Served) -> None:
    _, stub = served
    k = key(tenant(), [5, 6])
    await stub.Store(pb.StoreRequest(key=k, response=response("short"), ttl_s=1))
    assert (await stub.Lookup(pb.LookupRequest(key=k))).hit
    await asyncio.sleep(1.3)
    assert not (await stub.Lookup(pb.LookupRequest(key=k))).hit


async def test_tenant_isolation_exact_and_semantic(served: Served) -> None:
    _, stub = served
    a, b = tenant(), tenant()
    text = "What is the capital of France?"
    await stub.Store(pb.StoreRequest(key=key(a, [7, 7], text), response=response("Paris")))
    assert (await stub.Lookup(pb.LookupRequest(key=key(a, [7, 7], text)))).hit
    other = await stub.Lookup(pb.LookupRequest(key=key(b, [7, 7], text), semantic=True))
    assert not other.hit


async def test_single_flight_one_lease_others_get_the_value(served: Served) -> None:
    _, stub = served
    k = key(tenant(), [9, 9, 9])
    lookups = [asyncio.ensure_future(stub.Lookup(pb.LookupRequest(key=k, wait_ms=5000))) for _ in range(20)]
    leader = None
    while leader is None:
        done, _ = await asyncio.wait(lookups, return_when=asyncio.FIRST_COMPLETED)
        leader = next((f.result() for f in done if f.result().lease), None)
        assert leader is not None, "the first finished lookup must be the lease holder"
    await asyncio.sleep(0.1)  # the others are now waiting, not stampeding
    assert sum(1 for f in lookups if f.done()) == 1
    await stub.Store(pb.StoreRequest(key=k, response=response("once"), lease=leader.lease))
    results = await asyncio.gather(*lookups)
    assert sum(1 for r in results if r.lease) == 1
    followers = [r for r in results if not r.lease]
    assert len(followers) == 19 and all(r.hit and r.response.text == "once" for r in followers)


async def test_second_caller_without_wait_gets_no_lease(served: Served) -> None:
    _, stub = served
    k = key(tenant(), [4, 4])
    first = await stub.Lookup(pb.LookupRequest(key=k))
    second = await stub.Lookup(pb.LookupRequest(key=k))
    assert first.lease and not second.lease and not second.hit


async def test_semantic_hit_above_threshold_miss_below(served: Served) -> None:
    _, stub = served
    t = tenant()
    await stub.Store(
        pb.StoreRequest(key=key(t, [1], "What is the capital of France?"), response=response("Paris"))
    )
    para = key(t, [2], "Which city is the capital of France?")
    hit = await stub.Lookup(pb.LookupRequest(key=para, semantic=True))
    assert hit.hit and hit.kind == pb.HIT_KIND_SEMANTIC and hit.response.text == "Paris"
    assert 0.82 <= hit.similarity < 1.0
    strict = await stub.Lookup(pb.LookupRequest(key=para, semantic=True, similarity_threshold=0.99))
    assert not strict.hit
    unrelated = await stub.Lookup(
        pb.LookupRequest(key=key(t, [3], "How do I bake banana bread?"), semantic=True)
    )
    assert not unrelated.hit


async def test_semantic_guards_reject_hard_negatives(served: Served) -> None:
    _, stub = served
    t = tenant()
    await stub.Store(pb.StoreRequest(key=key(t, [1], "Convert 30 USD to EUR."), response=response("27.6")))
    near = await stub.Lookup(
        pb.LookupRequest(key=key(t, [2], "Convert 40 USD to EUR."), semantic=True, similarity_threshold=0.5)
    )
    assert not near.hit
    other_sampling = key(t, [3], "Convert 30 USD to EUR.", max_tokens=7)
    assert not (await stub.Lookup(pb.LookupRequest(key=other_sampling, semantic=True))).hit


async def test_model_version_change_misses(served: Served) -> None:
    _, stub = served
    t = tenant()
    text = "Explain photosynthesis in simple terms."
    await stub.Store(pb.StoreRequest(key=key(t, [1, 2], text, version="1"), response=response("old")))
    assert (await stub.Lookup(pb.LookupRequest(key=key(t, [1, 2], text, version="1")))).hit
    new = await stub.Lookup(pb.LookupRequest(key=key(t, [1, 2], text, version="2"), semantic=True))
    assert not new.hit


async def test_modes(served: Served) -> None:
    _, stub = served
    t = tenant()
    sampled = key(t, [8], temperature=0.9)
    auto = await stub.Lookup(pb.LookupRequest(key=sampled))
    assert not auto.hit and auto.skipped_reason == "nondeterministic"
    assert not (await stub.Store(pb.StoreRequest(key=sampled, response=response("x")))).stored
    forced = await stub.Store(pb.StoreRequest(key=sampled, response=response("x"), mode=pb.CACHE_MODE_FORCE))
    assert forced.stored
    assert (await stub.Lookup(pb.LookupRequest(key=sampled, mode=pb.CACHE_MODE_FORCE))).hit
    bypass = await stub.Lookup(pb.LookupRequest(key=sampled, mode=pb.CACHE_MODE_BYPASS))
    assert not bypass.hit and bypass.skipped_reason == "bypass"
    seeded = key(t, [8], temperature=0.9, seed=11)
    await stub.Store(pb.StoreRequest(key=seeded, response=response("seeded")))
    assert (await stub.Lookup(pb.LookupRequest(key=seeded))).response.text == "seeded"


async def test_invalidate_by_entry_tenant_and_model(served: Served) -> None:
    _, stub = served
    t = tenant()
    ids = []
    for model, tokens in [("m1", [1]), ("m1", [2]), ("m2", [3])]:
        k = key(t, tokens, f"question number {tokens[0]}", model=model)
        ids.append((await stub.Store(pb.StoreRequest(key=k, response=response("a")))).entry_id)
    assert (await stub.Invalidate(pb.InvalidateRequest(entry_id=ids[0]))).deleted == 1
    assert not (await stub.Lookup(pb.LookupRequest(key=key(t, [1], model="m1")))).hit
    assert (await stub.Invalidate(pb.InvalidateRequest(tenant=t, model="m1"))).deleted == 1
    assert not (await stub.Lookup(pb.LookupRequest(key=key(t, [2], model="m1")))).hit
    assert (await stub.Lookup(pb.LookupRequest(key=key(t, [3], model="m2")))).hit
    assert (await stub.Invalidate(pb.InvalidateRequest(tenant=t))).deleted == 1
    assert not (
        await stub.Lookup(pb.LookupRequest(key=key(t, [3], "question number 3", model="m2"), semantic=True))
    ).hit


async def test_corrupt_value_is_a_miss_and_deleted(served: Served, redis: RedisServer) -> None:
    _, stub = served
    k = key(tenant(), [6, 6, 6])
    entry_id = (await stub.Store(pb.StoreRequest(key=k, response=response("fine")))).entry_id
    ns, h = parse_entry_id(entry_id)
    client = redis_py.Redis.from_url(redis.url)
    client.set(ns.entry_key(h), b"LMC\x01" + b"\x00" * 16 + b"{tampered}")
    result = await stub.Lookup(pb.LookupRequest(key=k))
    assert not result.hit
    assert client.get(ns.entry_key(h)) is None
    client.close()


async def test_invalid_requests(served: Served) -> None:
    _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Lookup(pb.LookupRequest(key=pb.CacheKey(model="m", prompt_token_ids=[1])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invalidate(pb.InvalidateRequest(entry_id="not-an-id"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_replicas_share_semantic_entries(
    redis: RedisServer, served: Served, make_server: ServerFactory
) -> None:
    _, stub = served
    t = tenant()
    async with make_server(redis.url) as (_, replica):
        text = "How do I undo the last git commit?"
        assert not (await replica.Lookup(pb.LookupRequest(key=key(t, [1], text), semantic=True))).hit
        await stub.Store(pb.StoreRequest(key=key(t, [1], text), response=response("git reset")))
        para = key(t, [2], "What's the command to undo my most recent git commit?")
        hit = await replica.Lookup(pb.LookupRequest(key=para, semantic=True))
        assert hit.hit and hit.response.text == "git reset"
        await stub.Invalidate(pb.InvalidateRequest(entry_id=hit.entry_id))
        assert not (await replica.Lookup(pb.LookupRequest(key=para, semantic=True))).hit
