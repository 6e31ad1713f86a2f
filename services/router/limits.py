"""Per-key request and token rate limits shared by every router replica.

Each key has two token buckets in Redis: requests per minute (RPM) and tokens per minute (TPM).
A bucket holds at most `limit` units and refills continuously at `limit / 60` per second, so a
key may burst up to a minute's worth and then runs at its rate. One Lua script reads both
buckets, refills them from the Redis server clock (replicas with skewed clocks still agree),
and either takes from both or from neither: a request never spends its RPM unit while being
refused for TPM. Keys are `llmesh:rl:{<key_id>}:rpm|tpm` (one hash slot per key id) and expire
once full, so idle keys cost no memory.

Tokens are settled in two steps. `acquire(record, tokens)` reserves an upper bound before
generation (prompt tokens + max_tokens); when the request ends, `adjust(record, reserved,
actual)` gives back the unused part (or takes more if the estimate was low, letting the bucket go
negative so the next requests wait). `refund` returns a whole reservation of a request that
failed before doing work. A limit of 0 means unlimited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from libs.keys import KeyRecord
from libs.runtime.errors import ResourceExhausted, Unavailable

WINDOW_MS = 60_000

_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local costs = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local window = tonumber(ARGV[6])

local function level(key, limit)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then return limit end
  return math.min(limit, tokens + math.max(0, now - ts) * limit / window)
end

local function store(key, value, limit)
  redis.call('HSET', key, 'tokens', tostring(value), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((limit - value) * window / limit) + 1000)
end

local levels = {-1, -1}
for i = 1, 2 do
  if limits[i] > 0 then levels[i] = level(KEYS[i], limits[i]) end
end

if mode == 'acquire' then
  local waits = {0, 0}
  local short = 0
  for i = 1, 2 do
    if limits[i] > 0 and levels[i] < costs[i] then
      waits[i] = math.ceil((costs[i] - levels[i]) * window / limits[i])
      short = short + i
    end
  end
  if short > 0 then
    return {short, waits[1], waits[2], math.floor(levels[1]), math.floor(levels[2])}
  end
end

-- acquire (when everything fits) takes the costs; credit gives them back (negative = take more).
local sign = (mode == 'acquire') and -1 or 1
local out = {0, 0, 0, -1, -1}
for i = 1, 2 do
  if limits[i] > 0 and costs[i] ~= 0 then
    local value = math.min(limits[i], levels[i] + sign * costs[i])
    store(KEYS[i], value, limits[i])
    out[3 + i] = math.floor(value)
  elseif limits[i] > 0 then
    out[3 + i] = math.floor(levels[i])
  end
end
return out
"""

_RPM_SHORT, _TPM_SHORT = 1, 2


@dataclass(frozen=True)
class LimitState:
    """What is left in the key's buckets after a call; -1 where the limit is off."""

    remaining_requests: int
    remaining_tokens: int


class RateLimiter:
    """RPM and TPM token buckets per API key, in Redis, updated by one atomic script."""

    def __init__(self, redis_client: Any):
        self.redis = redis_client
        self._script = redis_client.register_script(_LUA)

    @staticmethod
    def _keys(key_id: str) -> list[str]:
        return [f"llmesh:rl:{{{key_id}}}:rpm", f"llmesh:rl:{{{key_id}}}:tpm"]

    async def _call(self, mode: str, record: KeyRecord, requests: int, tokens: int) -> list[int]:
        args = [mode, record.rpm, record.tpm, requests, tokens, WINDOW_MS]
        try:
            result = await self._script(keys=self._keys(record.key_id), args=args)
        except RedisError as exc:
            raise Unavailable(f"rate limiter unavailable: {exc}", reason="RATE_LIMITER_UNAVAILABLE") from exc
        return [int(v) for v in result]

    async def acquire(self, record: KeyRecord, tokens: int) -> LimitState:
        """Take one request and `tokens` tokens, or raise ResourceExhausted naming the limit hit."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if record.rpm <= 0 and record.tpm <= 0:
            return LimitState(-1, -1)
        if 0 < record.tpm < tokens:
            raise ResourceExhausted(
                f"request needs {tokens} tokens but key {record.key_id} allows {record.tpm} tokens per "
                "minute; lower max_tokens or shorten the prompt",
                retry_after_s=WINDOW_MS / 1000,
                reason="TPM_REQUEST_TOO_LARGE",
                metadata={"limit": "tpm", "tpm": str(record.tpm)},
            )
        short, wait_rpm, wait_tpm, left_rpm, left_tpm = await self._call("acquire", record, 1, tokens)
        if short:
            hit = [
                name
                for bit, name in (
                    (_RPM_SHORT, f"{record.rpm} requests per minute"),
                    (_TPM_SHORT, f"{record.tpm} tokens per minute"),
                )
                if short & bit
            ]
            limit = "rpm" if short == _RPM_SHORT else "tpm" if short == _TPM_SHORT else "rpm,tpm"
            wait_s = max(wait_rpm, wait_tpm) / 1000
            raise ResourceExhausted(
                f"rate limit of key {record.key_id} reached: {' and '.join(hit)}; "
                f"retry in {math.ceil(wait_s)} s",
                retry_after_s=wait_s,
                reason="RATE_LIMITED",
                metadata={"limit": limit},
            )
        return LimitState(left_rpm, left_tpm)

    async def adjust(self, record: KeyRecord, reserved_tokens: int, actual_tokens: int) -> LimitState:
        """Settle a finished request: give back `reserved - actual` tokens (take more if negative)."""
        delta = reserved_tokens - actual_tokens
        if record.tpm <= 0 or delta == 0:
            return LimitState(-1, -1)
        _, _, _, left_rpm, left_tpm = await self._call("credit", record, 0, delta)
        return LimitState(left_rpm, left_tpm)

    async def refund(self, record: KeyRecord, tokens: int, requests: int = 1) -> LimitState:
        """Give back a whole reservation (a request refused or failed before any work)."""
        if record.rpm <= 0 and record.tpm <= 0:
            return LimitState(-1, -1)
        _, _, _, left_rpm, left_tpm = await self._call("credit", record, requests, tokens)
        return LimitState(left_rpm, left_tpm)
