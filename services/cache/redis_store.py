"""Every Redis operation of the cache, each bounded by a timeout and mapped to `BackendError`.

Key layout inside one namespace (prefix `lc:<tenant hex>:<model hex>:<version hex>:`):

    e:<hash>   the serialised response (string, with TTL)
    l:<hash>   single-flight lease (string, PX)
    vec        entry hash -> float32 vector blob (hash, no TTL)
    age        entry hash -> version it was added at (sorted set, trims the oldest)
    ver        change counter (string)
    gen        random generation token; changes when the namespace is wiped
    log        change stream, ids `<ver>-0`, fields op=a|d, h=<hash>, v=<blob>

Writers change `vec` only through Lua scripts that bump `ver` and append to `log` atomically, so
every replica's in-memory mirror can catch up by reading the log after its own version. The
scripts touch keys of their own namespace only (fine on a single Redis or a primary/replica pair;
not cluster-safe, which the deployment does not use).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from services.cache.keys import Namespace

T = TypeVar("T")

# A key of another type where an entry or a lease should be answers {3, <index of that key>}
# (Redis would otherwise fail the whole script with WRONGTYPE).
_GET_OR_LEASE = """
local function wrong_type(reply)
  if type(reply) ~= 'table' or not reply.err then return false end
  if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then return true end
  error(reply.err)
end
local v = redis.pcall('GET', KEYS[1])
if wrong_type(v) then return {3, 1} end
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
local held = redis.pcall('GET', KEYS[2])
if wrong_type(held) then return {3, 2} end
if held == ARGV[1] then return {2} end
return {0}
"""

_RELEASE_LEASE = """
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'table' then return 0 end
if held == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_ADD_VECTOR = """
local ver = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[5], ARGV[5], 'NX')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ver, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], ver .. '-0', 'op', 'a', 'h', ARGV[1], 'v', ARGV[2])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if extra > 0 then
  for _, h in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    ver = redis.call('INCR', KEYS[4])
    redis.call('HDEL', KEYS[1], h)
    redis.call('ZREM', KEYS[2], h)
    redis.call('UNLINK', ARGV[6] .. h)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], ver .. '-0', 'op', 'd', 'h', h)
  end
end
return ver
"""

# ARGV[3] == '1': remove only while the stored vector still equals ARGV[4].
_REMOVE_VECTOR = """
if ARGV[3] == '1' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[4] then return 0 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local ver = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], ver .. '-0', 'op', 'd', 'h', ARGV[1])
return 1
"""


class BackendError(Exception):
    """Redis failed, refused the connection or did not answer in time."""


class BackendTimeout(BackendError):
    """Redis did not answer in time (it may still have run the command)."""


class WrongType(Exception):
    """A key holds a value of another Redis type than the cache writes there (not ours)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} holds a value of the wrong Redis type")
        self.key = key


@dataclass(frozen=True)
class LogEntry:
    """One change of a namespace's vector set."""

    version: int
    op: str  # "a" (add or replace) or "d" (delete)
    entry_hash: str
    vector: bytes = b""


@dataclass(frozen=True)
class Snapshot:
    """A namespace's whole vector set at one version."""

    generation: str | None
    version: int
    vectors: dict[str, bytes]


def _vector_keys(ns: Namespace) -> list[str]:
    p = ns.prefix
    return [f"{p}vec", f"{p}age", f"{p}log", f"{p}ver", f"{p}gen"]


def _text(value: bytes | str | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class RedisStore:
    """Async Redis access for the cache. Every call raises BackendError instead of hanging."""

    def __init__(self, client: aioredis.Redis, timeout_s: float, log_max_len: int = 100_000) -> None:
        self._client = client
        self.timeout_s = timeout_s
        self.log_max_len = log_max_len
        self._get_or_lease = client.register_script(_GET_OR_LEASE)
        self._release = client.register_script(_RELEASE_LEASE)
        self._add_vector = client.register_script(_ADD_VECTOR)
        self._remove_vector = client.register_script(_REMOVE_VECTOR)

    @classmethod
    def from_url(
        cls,
        url: str,
        timeout_s: float,
        slow_timeout_s: float,
        max_connections: int = 64,
        log_max_len: int = 100_000,
    ) -> RedisStore:
        """A store with its own pool; sockets time out after `slow_timeout_s` (snapshots, scans)."""
        # A blocking pool: a burst beyond max_connections queues for a connection (bounded by
        # the call's own timeout) instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=slow_timeout_s,
            socket_timeout=slow_timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a broken connection only: after Redis restarts, every pooled
            # connection fails once on first use, and that must not read as Redis being down.
            # Slowness is never retried here (each call's own timeout bounds it).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
        )
        client = aioredis.Redis(connection_pool=pool)
        return cls(client, timeout_s, log_max_len)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _run(self, call: Awaitable[T], timeout_s: float | None = None) -> T:
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                return await call
        except TimeoutError as err:
            raise BackendTimeout(f"redis did not answer within {timeout_s or self.timeout_s:.3f}s") from err
        except (RedisError, OSError) as err:
            raise BackendError(f"redis error: {err}") from err

    async def warm(self, connections: int, timeout_s: float) -> None:
        """Load the scripts and open `connections` pooled connections ahead of the first burst.

        Without it, the first burst of lookups each pays a connect, the client handshake and a
        NOSCRIPT round trip inside its own short budget, and some of them miss.
        """

        async def warm_up() -> None:
            for script in (self._get_or_lease, self._release, self._add_vector, self._remove_vector):
                await self._client.script_load(script.script)
            pool = self._client.connection_pool
            # get_connection connects (handshake included) before it returns a connection
            opened = await asyncio.gather(*[pool.get_connection() for _ in range(connections)])
            for conn in opened:
                await pool.release(conn)

        await self._run(warm_up(), timeout_s)

    async def ping(self, timeout_s: float | None = None) -> bool:
        """PING; BackendError when Redis is unreachable."""
        return bool(await self._run(self._client.ping(), timeout_s))

    async def get(self, key: str, timeout_s: float | None = None) -> bytes | None:
        """GET."""
        value = await self._run(self._client.get(key), timeout_s)
        return value.encode() if isinstance(value, str) else value

    async def mget(self, keys: Sequence[str], timeout_s: float | None = None) -> list[bytes | None]:
        """MGET."""
        if not keys:
            return []
        values = await self._run(self._client.mget(list(keys)), timeout_s)
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def delete(self, *keys: str) -> int:
        """UNLINK; returns how many existed."""
        return int(await self._run(self._client.unlink(*keys)))

    async def get_or_lease(
        self, ns: Namespace, entry_hash: str, token: str, lease_ms: int, timeout_s: float | None = None
    ) -> tuple[bytes | None, bool]:
        """Atomically: the entry if present, else try to take the lease. Returns (value, leased).

        Raises WrongType when the entry or lease key holds another type of value.
        """
        keys = [ns.entry_key(entry_hash), ns.lease_key(entry_hash)]
        reply = await self._run(self._get_or_lease(keys=keys, args=[token, lease_ms]), timeout_s)
        if int(reply[0]) == 1:
            return bytes(reply[1]), False
        if int(reply[0]) == 3:
            raise WrongType(keys[int(reply[1]) - 1])
        return None, int(reply[0]) == 2

    async def put_entry(self, ns: Namespace, entry_hash: str, blob: bytes, ttl_s: int, lease: str) -> None:
        """SET the entry with its TTL and release the lease if this caller still holds it.

        Pipelines run whole inside the call's timeout, handing their connection back included.
        """

        async def write() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(ns.entry_key(entry_hash), blob, ex=ttl_s)
                if lease:
                    await self._release(keys=[ns.lease_key(entry_hash)], args=[lease], client=pipe)
                await pipe.execute()

        await self._run(write())

    async def release_lease(self, ns: Namespace, entry_hash: str, lease: str) -> bool:
        """Give a lease back without storing (compare-and-delete)."""
        return bool(await self._run(self._release(keys=[ns.lease_key(entry_hash)], args=[lease])))

    async def add_vector(
        self, ns: Namespace, entry_hash: str, vector: bytes, max_entries: int, generation: str
    ) -> int:
        """Add or replace a vector, trimming the oldest beyond max_entries; returns the version."""
        args: list[bytes | str | int] = [
            entry_hash,
            vector,
            max_entries,
            self.log_max_len,
            generation,
            f"{ns.prefix}e:",
        ]
        return int(await self._run(self._add_vector(keys=_vector_keys(ns), args=args)))

    async def remove_vector(self, ns: Namespace, entry_hash: str, only_if: bytes | None = None) -> bool:
        """Remove a vector (with only_if: only while it still holds exactly that blob).

        Returns whether it was removed.
        """
        keys = _vector_keys(ns)[:4]
        args: list[bytes | str | int] = [entry_hash, self.log_max_len, "0" if only_if is None else "1"]
        if only_if is not None:
            args.append(only_if)
        return bool(await self._run(self._remove_vector(keys=keys, args=args)))

    async def read_log(
        self, ns: Namespace, after_version: int, count: int, timeout_s: float | None = None
    ) -> tuple[str | None, list[LogEntry]]:
        """The namespace generation and up to `count` changes after `after_version`."""

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(f"{ns.prefix}gen")
                pipe.xrange(f"{ns.prefix}log", min=f"({after_version}-0", max="+", count=count)
                return list(await pipe.execute())

        generation, raw = await self._run(read(), timeout_s)
        entries = []
        for stream_id, fields in raw:
            version = int(_text(stream_id).split("-")[0])  # type: ignore[union-attr]
            # A record missing fields reaches the index as op "" and is dropped there, counted.
            entries.append(
                LogEntry(
                    version=version,
                    op=_text(fields.get(b"op")) or "",
                    entry_hash=_text(fields.get(b"h")) or "",
                    vector=fields.get(b"v", b""),
                )
            )
        return _text(generation), entries

    async def snapshot(self, ns: Namespace, timeout_s: float) -> Snapshot:
        """Generation, version and every vector, read atomically (MULTI)."""

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(f"{ns.prefix}gen")
                pipe.get(f"{ns.prefix}ver")
                pipe.hgetall(f"{ns.prefix}vec")
                return list(await pipe.execute())

        generation, version, vectors = await self._run(read(), timeout_s)
        return Snapshot(
            generation=_text(generation),
            version=int(version or 0),
            vectors={_text(h) or "": v for h, v in vectors.items()},
        )

    async def scan_keys(self, pattern: str, timeout_s: float) -> list[str]:
        """Every key matching a SCAN pattern (incremental SCAN, never KEYS)."""

        async def scan() -> list[str]:
            return [_text(k) or "" async for k in self._client.scan_iter(match=pattern, count=1000)]

        return await self._run(scan(), timeout_s)

    async def delete_many(self, keys: Sequence[str], timeout_s: float) -> int:
        """UNLINK keys in batches of 1000; returns how many existed."""

        async def unlink() -> int:
            existed = 0
            for begin in range(0, len(keys), 1000):
                existed += int(await self._client.unlink(*keys[begin : begin + 1000]))
            return existed

        return await self._run(unlink(), timeout_s)

    async def hkeys(self, key: str, timeout_s: float) -> list[str]:
        """HKEYS."""
        return [_text(k) or "" for k in await self._run(self._client.hkeys(key), timeout_s)]

    async def info_memory(self) -> dict[str, Any]:
        """INFO memory (used_memory, maxmemory, maxmemory_policy)."""
        return dict(await self._run(self._client.info("memory")))
