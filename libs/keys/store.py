"""API keys in Redis: create, revoke, list, and authenticate with a short in-process cache.

Layout (all under `llmesh:`): `key:<key_id>` is a hash with the key's digest and limits;
`keys` is the set of every key id, `keys:tenant:<tenant>` the ids of one tenant, and
`tenant:<tenant>` a hash of tenant-wide settings that keys inherit unless they set their own
(today: `safety_fail_mode`).

`authenticate` caches what it read from Redis (records, and "no such key") for `cache_ttl_s`
(5 s by default) per key id, so the hot path is one HMAC and no Redis trip. A revocation made by
another process is therefore honoured within `cache_ttl_s`; in this process it is immediate. The
digest is checked against every presented key even on a cache hit. Keys never reach a log line.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.keys import apikey
from libs.runtime.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable

log = logging.getLogger("llmesh.keys")

PEPPER_ENV = "LLMESH_KEY_PEPPER"
DEV_PEPPER = "llmesh-development-pepper"
NS = "llmesh"
SafetyFailMode = Literal["open", "closed"]
# "" = not set here: a key follows its tenant, a tenant the router's LLMESH_ROUTER_SAFETY_FAIL_MODE.
FailModeSetting = Literal["open", "closed", ""]


def pepper_from_env() -> bytes:
    """The pepper from `LLMESH_KEY_PEPPER`; the development pepper (with a warning) when unset."""
    value = os.environ.get(PEPPER_ENV, "")
    if not value:
        log.warning("%s is not set: using the development pepper; set it outside development", PEPPER_ENV)
        value = DEV_PEPPER
    return value.encode()


@dataclass(frozen=True)
class KeyRecord:
    """What the router needs to know about an authenticated key. Limits of 0 mean unlimited."""

    key_id: str
    tenant: str
    models: tuple[str, ...] = ()
    rpm: int = 0
    tpm: int = 0
    budget_day_usd: float = 0.0
    budget_month_usd: float = 0.0
    safety_fail_mode: FailModeSetting = ""
    """When safety is down: the key's own setting, else its tenant's ("" = the router's default)."""
    cache_allowed: bool = True
    created_at: float = 0.0
    revoked_at: float = 0.0

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at > 0

    def allows_model(self, model: str) -> bool:
        """Whether the key may use `model` (an empty list allows every model)."""
        return not self.models or model in self.models

    def to_redis(self) -> dict[str, str]:
        """The record as a Redis hash (without the digest)."""
        return {
            "tenant": self.tenant,
            "models": ",".join(self.models),
            "rpm": str(self.rpm),
            "tpm": str(self.tpm),
            "budget_day_usd": repr(self.budget_day_usd),
            "budget_month_usd": repr(self.budget_month_usd),
            "safety_fail_mode": self.safety_fail_mode,
            "cache_allowed": "1" if self.cache_allowed else "0",
            "created_at": repr(self.created_at),
            "revoked_at": repr(self.revoked_at),
        }

    @classmethod
    def from_redis(cls, key_id: str, h: dict[str, str]) -> KeyRecord:
        """Rebuild a record from its Redis hash."""
        mode = h.get("safety_fail_mode", "")
        return cls(
            key_id=key_id,
            tenant=h.get("tenant", ""),
            models=tuple(m for m in h.get("models", "").split(",") if m),
            rpm=int(h.get("rpm", "0")),
            tpm=int(h.get("tpm", "0")),
            budget_day_usd=float(h.get("budget_day_usd", "0")),
            budget_month_usd=float(h.get("budget_month_usd", "0")),
            safety_fail_mode=fail_mode_setting(mode),
            cache_allowed=h.get("cache_allowed", "1") == "1",
            created_at=float(h.get("created_at", "0")),
            revoked_at=float(h.get("revoked_at", "0")),
        )


def fail_mode_setting(value: str) -> FailModeSetting:
    return "open" if value == "open" else "closed" if value == "closed" else ""


def _tenant_from_redis(tenant: str, h: dict[str, str]) -> TenantSettings:
    return TenantSettings(tenant, fail_mode_setting(h.get("safety_fail_mode", "")))


@dataclass
class _Cached:
    expires: float
    digest: str | None = None
    record: KeyRecord | None = None


@dataclass
class _TtlCache:
    """A bounded map key_id -> what Redis said, each entry valid for `ttl_s`."""

    ttl_s: float
    max_entries: int
    clock: Callable[[], float]
    entries: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)

    def get(self, key_id: str) -> _Cached | None:
        hit = self.entries.get(key_id)
        if hit is None or hit.expires <= self.clock():
            self.entries.pop(key_id, None)
            return None
        return hit

    def put(self, key_id: str, digest: str | None, record: KeyRecord | None) -> _Cached:
        entry = self.entries[key_id] = _Cached(self.clock() + self.ttl_s, digest, record)
        self.entries.move_to_end(key_id)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return entry

    def drop(self, key_id: str) -> None:
        self.entries.pop(key_id, None)


@dataclass(frozen=True)
class TenantSettings:
    """Tenant-wide settings; each key may override them."""

    tenant: str
    safety_fail_mode: FailModeSetting = ""


def _check_tenant(tenant: str) -> None:
    if not tenant or any(c.isspace() or c == "," for c in tenant) or len(tenant) > 128:
        raise InvalidArgument("tenant must be 1-128 characters without spaces or commas")


def _check_fail_mode(safety_fail_mode: str) -> None:
    if safety_fail_mode not in ("open", "closed", ""):
        raise InvalidArgument(
            f"safety_fail_mode must be 'open', 'closed' or '' (inherit), got {safety_fail_mode!r}"
        )


def _validate(
    tenant: str, models: Sequence[str], limits: dict[str, float], safety_fail_mode: str
) -> tuple[str, ...]:
    _check_tenant(tenant)
    names = tuple(m.strip() for m in models if m.strip())
    if any("," in m for m in names):
        raise InvalidArgument("model names may not contain commas")
    for name, value in limits.items():
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0 (0 means unlimited), got {value}")
    _check_fail_mode(safety_fail_mode)
    return names


class KeyStore:
    """API keys kept in Redis as peppered digests."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        pepper: bytes | None = None,
        cache_ttl_s: float = 5.0,
        cache_max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.redis: Any = redis  # decode_responses=True: every reply is str
        self._pepper = pepper if pepper is not None else pepper_from_env()
        self._cache = _TtlCache(cache_ttl_s, cache_max_entries, clock)
        self._now = wall_clock

    @classmethod
    def from_url(cls, redis_url: str, **kwargs: Any) -> KeyStore:
        """A store on the Redis at `redis_url` (e.g. `redis://127.0.0.1:6379/0`)."""
        return cls(aioredis.Redis.from_url(redis_url, decode_responses=True), **kwargs)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self.redis.aclose()

    @staticmethod
    def _key(key_id: str) -> str:
        return f"{NS}:key:{key_id}"

    @staticmethod
    def _tenant_set(tenant: str) -> str:
        return f"{NS}:keys:tenant:{tenant}"

    @staticmethod
    def _tenant_settings(tenant: str) -> str:
        return f"{NS}:tenant:{tenant}"

    async def set_tenant(self, tenant: str, *, safety_fail_mode: FailModeSetting) -> TenantSettings:
        """Set a tenant-wide setting ('' removes it); keys without their own follow it within
        `cache_ttl_s` in every router."""
        _check_tenant(tenant)
        _check_fail_mode(safety_fail_mode)
        try:
            if safety_fail_mode:
                await self.redis.hset(self._tenant_settings(tenant), "safety_fail_mode", safety_fail_mode)
            else:
                await self.redis.hdel(self._tenant_settings(tenant), "safety_fail_mode")
        except RedisError as exc:
            raise Unavailable(f"key store unavailable: {exc}") from exc
        self._cache.entries.clear()
        log.info(
            "tenant %s settings changed",
            tenant,
            extra={"fields": {"tenant": tenant, "safety_fail_mode": safety_fail_mode or "inherit"}},
        )
        return await self.get_tenant(tenant)

    async def get_tenant(self, tenant: str) -> TenantSettings:
        """A tenant's own settings (empty values where it sets none)."""
        _check_tenant(tenant)
        try:
            h: dict[str, str] = await self.redis.hgetall(self._tenant_settings(tenant))
        except RedisError as exc:
            raise Unavailable(f"key store unavailable: {exc}") from exc
        return _tenant_from_redis(tenant, h)

    async def create(
        self,
        tenant: str,
        *,
        models: Sequence[str] = (),
        rpm: int = 0,
        tpm: int = 0,
        budget_day_usd: float = 0.0,
        budget_month_usd: float = 0.0,
        safety_fail_mode: FailModeSetting = "",
        cache_allowed: bool = True,
        plaintext: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """Create a key; returns the plaintext (shown once, never stored) and its record.

        `plaintext` installs a key chosen by the operator (e.g. LLMESH_DEV_API_KEY for `make up`)
        instead of a random one; it must have the key format.
        """
        names = _validate(
            tenant,
            models,
            {"rpm": rpm, "tpm": tpm, "budget_day_usd": budget_day_usd, "budget_month_usd": budget_month_usd},
            safety_fail_mode,
        )
        if plaintext is None:
            key = apikey.generate()
        else:
            try:
                key = apikey.parse(plaintext)
            except apikey.MalformedKey as exc:
                raise InvalidArgument(str(exc)) from None
        record = KeyRecord(
            key_id=key.key_id,
            tenant=tenant,
            models=names,
            rpm=int(rpm),
            tpm=int(tpm),
            budget_day_usd=float(budget_day_usd),
            budget_month_usd=float(budget_month_usd),
            safety_fail_mode=safety_fail_mode,
            cache_allowed=cache_allowed,
            created_at=self._now(),
        )
        fields = {**record.to_redis(), "digest": apikey.digest(self._pepper, key)}
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(key.key_id), mapping=fields)
                pipe.sadd(f"{NS}:keys", key.key_id)
                pipe.sadd(self._tenant_set(tenant), key.key_id)
                await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"key store unavailable: {exc}") from exc
        self._cache.drop(key.key_id)
        log.info(
            "api key %s created for tenant %s",
            key.key_id,
            tenant,
            extra={"fields": {"key_id": key.key_id, "tenant": tenant}},
        )
        return key.plaintext, record

    async def get(self, key_id: str) -> KeyRecord:
        """The record of `key_id` (revoked or not); raises NotFound."""
        h = await self._read(key_id)
        if h is None:
            raise NotFound(f"no API key with id {key_id}")
        return KeyRecord.from_redis(key_id, h)

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key by id (idempotent); raises NotFound for an unknown id."""
        if not apikey.is_key_id(key_id):
            raise InvalidArgument(f"not a key id: expected {apikey.KEY_ID_HEX} hex digits")
        record = await self.get(key_id)
        if not record.revoked:
            try:
                await self.redis.hset(self._key(key_id), "revoked_at", repr(self._now()))
            except RedisError as exc:
                raise Unavailable(f"key store unavailable: {exc}") from exc
            log.info(
                "api key %s revoked", key_id, extra={"fields": {"key_id": key_id, "tenant": record.tenant}}
            )
        self._cache.drop(key_id)
        return await self.get(key_id)

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        """Every key (or one tenant's), oldest first, revoked ones included."""
        try:
            ids = await self.redis.smembers(self._tenant_set(tenant) if tenant else f"{NS}:keys")
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id in sorted(ids):
                    pipe.hgetall(self._key(key_id))
                hashes = await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"key store unavailable: {exc}") from exc
        records = [KeyRecord.from_redis(k, h) for k, h in zip(sorted(ids), hashes, strict=True) if h]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    async def _read(self, key_id: str) -> dict[str, str] | None:
        try:
            h: dict[str, str] = await self.redis.hgetall(self._key(key_id))
        except RedisError as exc:
            raise Unavailable(f"key store unavailable: {exc}") from exc
        return h or None

    async def _effective(self, key_id: str, h: dict[str, str]) -> KeyRecord:
        """The key's record with what it leaves unset taken from its tenant's settings."""
        record = KeyRecord.from_redis(key_id, h)
        if record.safety_fail_mode or not record.tenant:
            return record
        try:
            tenant_h: dict[str, str] = await self.redis.hgetall(self._tenant_settings(record.tenant))
        except RedisError as exc:
            raise Unavailable(f"key store unavailable: {exc}") from exc
        tenant = _tenant_from_redis(record.tenant, tenant_h)
        return replace(record, safety_fail_mode=tenant.safety_fail_mode)

    async def authenticate(self, bearer_token: str | None) -> KeyRecord:
        """The record of a valid, unrevoked key; raises Unauthenticated otherwise.

        Accepts the token alone or a whole `Bearer <token>` header value.
        """
        token = apikey.bearer_token(bearer_token)
        if not token:
            raise Unauthenticated(
                "missing API key: send `authorization: Bearer <key>`", reason="API_KEY_MISSING"
            )
        try:
            key = apikey.parse(token)
        except apikey.MalformedKey as exc:
            raise Unauthenticated(str(exc), reason="API_KEY_MALFORMED") from None
        cached = self._cache.get(key.key_id)
        if cached is None:
            h = await self._read(key.key_id)
            if h is None or "digest" not in h:
                cached = self._cache.put(key.key_id, None, None)
            else:
                cached = self._cache.put(key.key_id, h["digest"], await self._effective(key.key_id, h))
        if cached.record is None or cached.digest is None:
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        if not apikey.matches(self._pepper, key, cached.digest):
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        if cached.record.revoked:
            raise Unauthenticated(f"API key {key.key_id} was revoked", reason="API_KEY_REVOKED")
        return cached.record
