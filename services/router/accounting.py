"""Usage accounting and spend budgets per API key, in Redis, atomic under concurrency.

Each key has one hash per UTC day (`llmesh:usage:<key_id>:d:<YYYY-MM-DD>`) and per UTC month
(`...:m:<YYYY-MM>`) holding `requests`, `prompt_tokens`, `completion_tokens`, `cost_usd`,
the same four per model (`<model>|requests`, ...) and `reserved_usd`.

Budgets use reservations: before inference, `reserve` adds the request's worst-case cost
(prompt at the input price + max_tokens at the output price) to `reserved_usd` in one Lua script
that first checks `cost_usd + reserved_usd + hold <= budget` for the day and the month; so
concurrent requests can never spend past a budget together. `commit` swaps the hold for the real
cost and counts tokens; `release` drops the hold of a request that produced nothing. A router that
dies between the two leaves its hold until the window's hash expires (bounded by one request's
worst case per crash).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from libs.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable

PREFIX = "llmesh:usage:"
DAY_TTL_S = 2 * 86_400
MONTH_TTL_S = 62 * 86_400
WINDOWS = ("day", "month")
TOTAL_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")

_RESERVE = """
local hold = tonumber(ARGV[1])
for i = 1, 2 do
  local budget = tonumber(ARGV[1 + i])
  if budget > 0 then
    local h = redis.call('HMGET', KEYS[i], 'cost_usd', 'reserved_usd')
    local used = tonumber(h[1] or '0') + math.max(0, tonumber(h[2] or '0'))
    if used + hold > budget then return {i, tostring(used)} end
  end
end
for i = 1, 2 do
  redis.call('HINCRBYFLOAT', KEYS[i], 'reserved_usd', hold)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 + i]))
end
return {0, '0'}
"""

_COMMIT = """
local hold, cost = ARGV[1], tonumber(ARGV[2])
local prompt, completion, model = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
for i = 1, 2 do
  local k = KEYS[i]
  redis.call('HINCRBYFLOAT', k, 'reserved_usd', -tonumber(hold))
  if ARGV[6] == '1' then
    redis.call('HINCRBY', k, 'requests', 1)
    redis.call('HINCRBY', k, 'prompt_tokens', prompt)
    redis.call('HINCRBY', k, 'completion_tokens', completion)
    redis.call('HINCRBYFLOAT', k, 'cost_usd', cost)
    redis.call('HINCRBY', k, model .. '|requests', 1)
    redis.call('HINCRBY', k, model .. '|prompt_tokens', prompt)
    redis.call('HINCRBY', k, model .. '|completion_tokens', completion)
    redis.call('HINCRBYFLOAT', k, model .. '|cost_usd', cost)
  end
  redis.call('EXPIRE', k, tonumber(ARGV[6 + i]))
end
return 1
"""


def hold_usd(prompt_tokens: int, max_tokens: int, input_per_1k: float, output_per_1k: float) -> float:
    """Worst-case cost of a request: every allowed completion token is generated."""
    return (prompt_tokens * input_per_1k + max_tokens * output_per_1k) / 1000


def window_keys(key_id: str, now: dt.datetime) -> tuple[str, str]:
    """The day and month hash keys of `key_id` at UTC time `now`."""
    now = now.astimezone(dt.UTC)
    return f"{PREFIX}{key_id}:d:{now:%Y-%m-%d}", f"{PREFIX}{key_id}:m:{now:%Y-%m}"


def seconds_to_window_end(window: str, now: dt.datetime) -> float:
    """Seconds until the day or month window (UTC) starts over."""
    now = now.astimezone(dt.UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        end = start + dt.timedelta(days=1)
    else:
        first = start.replace(day=1)
        end = (first + dt.timedelta(days=32)).replace(day=1)
    return (end - now).total_seconds()


@dataclass(frozen=True)
class Reservation:
    """A budget hold taken by `reserve`; pass it to `commit` or `release` exactly once."""

    keys: tuple[str, str]
    hold_usd: float


@dataclass
class ModelTotals:
    """Usage of one model in a window."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class WindowUsage:
    """Usage of one key in one window, with the budget left."""

    window: str
    spent_usd: float
    reserved_usd: float
    budget_usd: float
    models: dict[str, ModelTotals] = field(default_factory=dict)
    totals: ModelTotals = field(default_factory=ModelTotals)

    @property
    def remaining_usd(self) -> float:
        """Budget left in the window; 0 when the budget is unlimited (budget_usd 0)."""
        if self.budget_usd <= 0:
            return 0.0
        return max(0.0, self.budget_usd - self.spent_usd)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_usage(window: str, raw: dict[Any, Any], budget_usd: float) -> WindowUsage:
    """Turn a usage hash into totals and per-model usage."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    models: dict[str, ModelTotals] = {}
    for name, value in fields.items():
        model, sep, metric = name.rpartition("|")
        if not sep or metric not in TOTAL_FIELDS:
            continue
        totals = models.setdefault(model, ModelTotals())
        setattr(totals, metric, float(value) if metric == "cost_usd" else int(value))
    totals = ModelTotals(
        requests=int(fields.get("requests", 0)),
        prompt_tokens=int(fields.get("prompt_tokens", 0)),
        completion_tokens=int(fields.get("completion_tokens", 0)),
        cost_usd=float(fields.get("cost_usd", 0.0)),
    )
    return WindowUsage(
        window=window,
        spent_usd=totals.cost_usd,
        reserved_usd=max(0.0, float(fields.get("reserved_usd", 0.0))),
        budget_usd=budget_usd,
        models=models,
        totals=totals,
    )


class Accounting:
    """Budget holds, usage counters and usage reports over one Redis client."""

    def __init__(self, redis: Any, clock: Callable[[], dt.datetime] | None = None):
        self.redis = redis
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._reserve = redis.register_script(_RESERVE)
        self._commit = redis.register_script(_COMMIT)

    async def reserve(self, key_id: str, hold: float, budget_day: float, budget_month: float) -> Reservation:
        """Hold `hold` dollars against the key's budgets; ResourceExhausted when it does not fit."""
        now = self._clock()
        keys = window_keys(key_id, now)
        try:
            over, used = await self._reserve(
                keys=list(keys),
                args=[repr(hold), repr(budget_day), repr(budget_month), DAY_TTL_S, MONTH_TTL_S],
            )
        except RedisError as exc:
            raise Unavailable(f"usage store unavailable, cannot check the budget: {exc}") from None
        over = int(over)
        if over:
            window = WINDOWS[over - 1]
            budget = budget_day if over == 1 else budget_month
            used_usd = float(_text(used))
            retry = seconds_to_window_end(window, now)
            if used_usd >= budget:
                raise ResourceExhausted(
                    f"budget exhausted: this key spent ${used_usd:.6f} of its {window} budget "
                    f"${budget:.6f}; it resets in {retry / 3600:.1f} h",
                    retry_after_s=retry,
                    reason="BUDGET_EXHAUSTED",
                    metadata={"window": window},
                )
            raise ResourceExhausted(
                f"budget exhausted for this request: it may cost up to ${hold:.6f} but only "
                f"${budget - used_usd:.6f} of the {window} budget is left; lower max_tokens or wait",
                retry_after_s=retry,
                reason="BUDGET_EXHAUSTED",
                metadata={"window": window},
            )
        return Reservation(keys=keys, hold_usd=hold)

    async def commit(
        self, res: Reservation, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float
    ) -> None:
        """Replace the hold with the real cost and count the request's tokens (RedisError propagates)."""
        await self._commit(
            keys=list(res.keys),
            args=[repr(res.hold_usd), repr(cost_usd), prompt_tokens, completion_tokens, model, 1,
                  DAY_TTL_S, MONTH_TTL_S],
        )  # fmt: skip

    async def release(self, res: Reservation) -> None:
        """Drop the hold of a request that produced nothing billable."""
        await self._commit(
            keys=list(res.keys),
            args=[repr(res.hold_usd), "0", 0, 0, "", 0, DAY_TTL_S, MONTH_TTL_S],
        )

    async def usage(self, key_id: str, window: str, budget_usd: float) -> WindowUsage:
        """The key's usage in the current day or month."""
        if window not in WINDOWS:
            raise InvalidArgument(f"window is {window!r}; use 'day' or 'month'", reason="INVALID_WINDOW")
        day, month = window_keys(key_id, self._clock())
        try:
            raw = await self.redis.hgetall(day if window == "day" else month)
        except RedisError as exc:
            raise Unavailable(f"usage store unavailable: {exc}") from None
        return parse_usage(window, raw, budget_usd)
