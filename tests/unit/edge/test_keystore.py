"""KeyStore against a real redis-server."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from libs.keys import KeyStore, apikey
from libs.runtime.errors import InvalidArgument, NotFound, Unauthenticated

PEPPER = b"test-pepper"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_for(client: aioredis.Redis, clock: FakeClock | None = None, ttl: float = 5.0) -> KeyStore:
    return KeyStore(client, pepper=PEPPER, cache_ttl_s=ttl, clock=clock or FakeClock())


async def test_create_then_authenticate(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    key, record = await store.create(
        "acme", models=["smollm2-135m"], rpm=10, tpm=1000, budget_day_usd=1.5, safety_fail_mode="open"
    )
    got = await store.authenticate(f"Bearer {key}")
    assert got == record
    assert got.tenant == "acme" and got.models == ("smollm2-135m",) and got.rpm == 10
    assert got.safety_fail_mode == "open" and got.budget_day_usd == 1.5
    assert got.allows_model("smollm2-135m") and not got.allows_model("other")
    assert await store.authenticate(key) == record


async def test_only_a_digest_is_stored(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    key, record = await store.create("acme")
    secret = apikey.parse(key).secret
    for name in await redis_client.keys("*"):
        kind = await redis_client.type(name)
        dump = str(await redis_client.hgetall(name) if kind == "hash" else await redis_client.smembers(name))
        assert secret not in dump
    stored = await redis_client.hget(f"llmesh:key:{record.key_id}", "digest")
    assert stored == apikey.digest(PEPPER, apikey.parse(key))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "API_KEY_MISSING"),
        ("Bearer ", "API_KEY_MISSING"),
        ("Bearer not-a-key", "API_KEY_MALFORMED"),
        ("Bearer llm-0123456789abcdef-" + "a" * 40, "API_KEY_UNKNOWN"),
    ],
)
async def test_refusals_carry_a_reason(redis_client: aioredis.Redis, header: str | None, reason: str) -> None:
    store = store_for(redis_client)
    with pytest.raises(Unauthenticated) as info:
        await store.authenticate(header)
    assert info.value.reason == reason
    assert info.value.message


async def test_wrong_secret_for_a_real_id_is_unknown(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    key, record = await store.create("acme")
    forged = f"llm-{record.key_id}-{apikey.generate().secret}"
    await store.authenticate(key)  # cached now: the forged key must still fail
    with pytest.raises(Unauthenticated) as info:
        await store.authenticate(forged)
    assert info.value.reason == "API_KEY_UNKNOWN"


async def test_other_pepper_cannot_authenticate(redis_client: aioredis.Redis) -> None:
    key, _ = await store_for(redis_client).create("acme")
    other = KeyStore(redis_client, pepper=b"another-pepper")
    with pytest.raises(Unauthenticated):
        await other.authenticate(key)


async def test_revocation_is_immediate_here_and_within_ttl_elsewhere(redis_client: aioredis.Redis) -> None:
    clock = FakeClock()
    admin, replica = store_for(redis_client), store_for(redis_client, clock, ttl=5.0)
    key, record = await admin.create("acme")
    assert await replica.authenticate(key) == record  # now cached in the replica
    revoked = await admin.revoke(record.key_id)
    assert revoked.revoked
    with pytest.raises(Unauthenticated) as info:
        await admin.authenticate(key)
    assert info.value.reason == "API_KEY_REVOKED"
    assert (await replica.authenticate(key)).key_id == record.key_id  # still inside the cache TTL
    clock.now += 5.01
    with pytest.raises(Unauthenticated) as info:
        await replica.authenticate(key)
    assert info.value.reason == "API_KEY_REVOKED"


async def test_cache_avoids_redis_round_trips(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    key, _ = await store.create("acme")
    await store.authenticate(key)
    before = (await redis_client.info("stats"))["total_commands_processed"]
    for _ in range(20):
        await store.authenticate(key)
    after = (await redis_client.info("stats"))["total_commands_processed"]
    assert after - before == 1  # only the INFO call itself


async def test_list_by_tenant_and_revoke_errors(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    _, a = await store.create("acme")
    _, b = await store.create("globex", models=["m1", "m2"])
    _, c = await store.create("acme", rpm=5)
    assert {r.key_id for r in await store.list()} == {a.key_id, b.key_id, c.key_id}
    assert {r.key_id for r in await store.list("acme")} == {a.key_id, c.key_id}
    assert await store.list("nobody") == []
    with pytest.raises(NotFound):
        await store.revoke("0123456789abcdef")
    with pytest.raises(InvalidArgument):
        await store.revoke("not an id")
    await store.revoke(a.key_id)
    again = await store.revoke(a.key_id)  # idempotent
    assert again.revoked
    assert [r.revoked for r in await store.list("acme")] == [True, False]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tenant": ""},
        {"tenant": "a b"},
        {"tenant": "acme", "rpm": -1},
        {"tenant": "acme", "budget_month_usd": -0.5},
        {"tenant": "acme", "safety_fail_mode": "maybe"},
    ],
)
async def test_create_validates(redis_client: aioredis.Redis, kwargs: dict[str, object]) -> None:
    store = store_for(redis_client)
    tenant = str(kwargs.pop("tenant"))
    with pytest.raises(InvalidArgument):
        await store.create(tenant, **kwargs)  # type: ignore[arg-type]
    assert await store.list() == []


async def test_keys_never_reach_the_log(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = store_for(redis_client)
    key, record = await store.create("acme")
    await store.authenticate(key)
    await store.revoke(record.key_id)
    with pytest.raises(Unauthenticated):
        await store.authenticate(key)
    assert record.key_id in caplog.text
    assert apikey.parse(key).secret not in caplog.text


async def test_keys_follow_their_tenants_fail_mode_unless_they_set_their_own(
    redis_client: aioredis.Redis,
) -> None:
    clock = FakeClock()
    store = store_for(redis_client, clock)
    inheriting, _ = await store.create("tenant-a")
    own, _ = await store.create("tenant-a", safety_fail_mode="closed")
    other_tenant, _ = await store.create("tenant-b")
    assert (await store.authenticate(inheriting)).safety_fail_mode == ""  # the router's default applies

    assert (await store.set_tenant("tenant-a", safety_fail_mode="open")).safety_fail_mode == "open"
    assert (await store.authenticate(inheriting)).safety_fail_mode == "open"
    assert (await store.authenticate(own)).safety_fail_mode == "closed", "a key's own setting wins"
    assert (await store.authenticate(other_tenant)).safety_fail_mode == ""

    # Another router process (its own cache) sees the change once its cached record expires.
    other_router = store_for(redis_client, clock)
    assert (await other_router.authenticate(inheriting)).safety_fail_mode == "open"
    await store.set_tenant("tenant-a", safety_fail_mode="")
    assert (await other_router.authenticate(inheriting)).safety_fail_mode == "open"
    clock.now += 6
    assert (await other_router.authenticate(inheriting)).safety_fail_mode == ""
    assert (await store.get_tenant("tenant-a")).safety_fail_mode == ""


async def test_tenant_settings_are_validated(redis_client: aioredis.Redis) -> None:
    store = store_for(redis_client)
    with pytest.raises(InvalidArgument, match="safety_fail_mode"):
        await store.set_tenant("acme", safety_fail_mode="maybe")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="tenant"):
        await store.set_tenant("two words", safety_fail_mode="open")
