"""Circuit breakers per backend, with state shared through Redis so every router replica agrees.

States: CLOSED (calls flow; `failures` consecutive failures open it), OPEN (calls are refused
until `open_s` has passed), HALF_OPEN (one probe call at a time is let through; its success
closes the breaker, its failure opens it again). A probe that never reports back frees the
slot after `probe_s`. Results of calls admitted before a state change are ignored, so a burst
of in-flight failures cannot re-open a breaker a probe just closed.

Every transition runs as one Lua script, so two replicas never interleave a read and a write.
When Redis itself is unreachable, the breakers fall back to process-local state (with a log
line and the `llmesh_router_breaker_store_fallback_total` metric) rather than failing requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

log = logging.getLogger(__name__)


class BreakerState(IntEnum):
    """Breaker state; the value is what the metric reports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


_STATE_NAMES = {"closed": BreakerState.CLOSED, "half_open": BreakerState.HALF_OPEN, "open": BreakerState.OPEN}


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds shared by every breaker."""

    failures: int = 5
    open_s: float = 5.0
    probe_s: float = 5.0
    ttl_s: int = 86_400


@dataclass(frozen=True)
class Admission:
    """Whether a call may go to a backend, and whether it is the half-open probe."""

    allowed: bool
    probe: bool
    state: BreakerState
    retry_in_s: float = 0.0


class BreakerStore(Protocol):
    """Where breaker state lives. Times are integer milliseconds."""

    async def admit(self, backend: str, now_ms: int, cfg: BreakerConfig) -> Admission: ...

    async def record(
        self, backend: str, ok: bool, probe: bool, now_ms: int, cfg: BreakerConfig
    ) -> BreakerState: ...

    async def state(self, backend: str, now_ms: int) -> BreakerState: ...

    async def release_probe(self, backend: str) -> None: ...


@dataclass
class _Entry:
    state: str = "closed"
    failures: int = 0
    open_until: int = 0
    probe_until: int = 0


class MemoryBreakerStore:
    """Process-local breaker state (unit tests, and the fallback when Redis is down)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def admit(self, backend: str, now_ms: int, cfg: BreakerConfig) -> Admission:
        e = self._entries.setdefault(backend, _Entry())
        if e.state == "closed":
            return Admission(True, False, BreakerState.CLOSED)
        if now_ms < e.open_until:
            return Admission(False, False, BreakerState.OPEN, (e.open_until - now_ms) / 1000)
        if now_ms < e.probe_until:
            return Admission(False, False, BreakerState.HALF_OPEN, (e.probe_until - now_ms) / 1000)
        e.state, e.probe_until = "half_open", now_ms + int(cfg.probe_s * 1000)
        return Admission(True, True, BreakerState.HALF_OPEN)

    async def record(
        self, backend: str, ok: bool, probe: bool, now_ms: int, cfg: BreakerConfig
    ) -> BreakerState:
        e = self._entries.setdefault(backend, _Entry())
        if e.state == "closed":
            if ok:
                e.failures = 0
            else:
                e.failures += 1
                if e.failures >= cfg.failures:
                    e.state, e.open_until, e.probe_until = "open", now_ms + int(cfg.open_s * 1000), 0
        elif probe:
            if ok:
                self._entries[backend] = _Entry()
            else:
                e.state, e.open_until, e.probe_until = "open", now_ms + int(cfg.open_s * 1000), 0
        return _STATE_NAMES[self._entries[backend].state]

    async def release_probe(self, backend: str) -> None:
        e = self._entries.get(backend)
        if e is not None and e.state == "half_open":
            e.probe_until = 0

    async def state(self, backend: str, now_ms: int) -> BreakerState:
        e = self._entries.get(backend)
        if e is None or e.state == "closed":
            return BreakerState.CLOSED
        return BreakerState.OPEN if now_ms < e.open_until else BreakerState.HALF_OPEN


_ADMIT = """
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'probe_until')
local state = st[1] or 'closed'
if state == 'closed' then return {1, 0, 'closed', 0} end
local now = tonumber(ARGV[1])
local open_until = tonumber(st[2] or '0')
local probe_until = tonumber(st[3] or '0')
if now < open_until then return {0, 0, 'open', open_until - now} end
if now < probe_until then return {0, 0, 'half_open', probe_until - now} end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, 1, 'half_open', 0}
"""

_RECORD = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local ok, probe, now = ARGV[1] == '1', ARGV[2] == '1', tonumber(ARGV[3])
local function open()
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[5]), 'probe_until', 0,
    'failures', 0)
end
if state == 'closed' then
  if ok then
    redis.call('HSET', KEYS[1], 'failures', 0)
  else
    local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
    if n >= tonumber(ARGV[4]) then open() end
  end
elseif probe then
  if ok then redis.call('DEL', KEYS[1]) return 'closed' end
  open()
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return redis.call('HGET', KEYS[1], 'state') or 'closed'
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then redis.call('HSET', KEYS[1], 'probe_until', 0) end
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStore:
    """Breaker state in Redis hashes `<prefix><backend>`, changed only by Lua scripts."""

    def __init__(self, redis: Any, prefix: str = "llmesh:breaker:"):
        self.redis = redis
        self.prefix = prefix
        self._admit = redis.register_script(_ADMIT)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)

    async def admit(self, backend: str, now_ms: int, cfg: BreakerConfig) -> Admission:
        allowed, probe, state, wait_ms = await self._admit(
            keys=[self.prefix + backend], args=[now_ms, int(cfg.probe_s * 1000), cfg.ttl_s]
        )
        return Admission(bool(allowed), bool(probe), _STATE_NAMES[_text(state)], int(wait_ms) / 1000)

    async def record(
        self, backend: str, ok: bool, probe: bool, now_ms: int, cfg: BreakerConfig
    ) -> BreakerState:
        state = await self._record(
            keys=[self.prefix + backend],
            args=[int(ok), int(probe), now_ms, cfg.failures, int(cfg.open_s * 1000), cfg.ttl_s],
        )
        return _STATE_NAMES[_text(state)]

    async def release_probe(self, backend: str) -> None:
        await self._release(keys=[self.prefix + backend], args=[])

    async def state(self, backend: str, now_ms: int) -> BreakerState:
        state, open_until = await self.redis.hmget(self.prefix + backend, ["state", "open_until"])
        name = _text(state) if state else "closed"
        if name == "closed":
            return BreakerState.CLOSED
        return BreakerState.OPEN if now_ms < int(open_until or 0) else BreakerState.HALF_OPEN


StateListener = Callable[[str, BreakerState], None]


class Breakers:
    """The breakers of all backends: admit before a call, record its outcome after."""

    def __init__(
        self,
        store: BreakerStore,
        cfg: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_state: StateListener | None = None,
        on_store_error: Callable[[], None] | None = None,
        store_errors: tuple[type[BaseException], ...] = (),
    ):
        self.store = store
        self.cfg = cfg or BreakerConfig()
        self._clock = clock
        self._on_state = on_state
        self._on_store_error = on_store_error
        self._store_errors = store_errors
        self._local = MemoryBreakerStore()
        self.last_state: dict[str, BreakerState] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _note(self, backend: str, state: BreakerState) -> None:
        previous = self.last_state.get(backend)
        self.last_state[backend] = state
        if previous != state:
            if previous is not None:
                log.warning(
                    "circuit breaker %s",
                    state.name.lower(),
                    extra={"fields": {"backend": backend, "from": previous.name.lower()}},
                )
            if self._on_state:
                self._on_state(backend, state)

    def _store_failed(self, exc: BaseException) -> None:
        log.warning(
            "breaker store unreachable; using process-local breaker state",
            extra={"fields": {"error": repr(exc)}},
        )
        if self._on_store_error:
            self._on_store_error()

    async def admit(self, backend: str) -> Admission:
        """May a call go to `backend` now? Half-open admits one probe at a time."""
        now = self._now_ms()
        try:
            adm = await self.store.admit(backend, now, self.cfg)
        except self._store_errors as exc:
            self._store_failed(exc)
            adm = await self._local.admit(backend, now, self.cfg)
        self._note(backend, adm.state)
        return adm

    async def record(self, backend: str, ok: bool, admission: Admission) -> BreakerState:
        """Record the outcome of a call admitted with `admission`."""
        now = self._now_ms()
        try:
            state = await self.store.record(backend, ok, admission.probe, now, self.cfg)
        except self._store_errors as exc:
            self._store_failed(exc)
            state = await self._local.record(backend, ok, admission.probe, now, self.cfg)
        self._note(backend, state)
        return state

    async def release(self, backend: str, admission: Admission) -> None:
        """Give back a probe slot whose call ended without a verdict on the backend's health."""
        if not admission.probe:
            return
        try:
            await self.store.release_probe(backend)
        except self._store_errors as exc:
            self._store_failed(exc)
            await self._local.release_probe(backend)

    async def state(self, backend: str) -> BreakerState:
        """The current state of a backend's breaker."""
        now = self._now_ms()
        try:
            state = await self.store.state(backend, now)
        except self._store_errors as exc:
            self._store_failed(exc)
            state = await self._local.state(backend, now)
        self._note(backend, state)
        return state
