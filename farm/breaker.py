"""A circuit breaker per model, shared by every worker through Redis.

When a model is overloaded (529s, 5xx, timeouts), each worker retrying on its own keeps
hammering it and burns attempts. The breaker opens for everyone after enough failures, lets
exactly ``probes`` calls through once the cooldown is over, and closes again when a probe
succeeds (a failed probe re-opens it with the cooldown doubled). ``transition`` is the whole
arithmetic as a pure function; ``LUA`` repeats it inside Redis (one atomic round trip per
call, on Redis's clock) and the integration tests check the two agree step by step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.policies import ErrorKind

log = logging.getLogger("farm.breaker")

WINDOW_BUCKETS = 10  # the sliding window is this many buckets of window_s / 10 each
MAX_REOPENS = 30  # doublings beyond this cannot matter: the cooldown is capped long before
BREAKER_KINDS = frozenset(
    {ErrorKind.OVERLOADED, ErrorKind.SERVER, ErrorKind.TIMEOUT, ErrorKind.CONNECTION}
)


def counts_as_failure(kind: ErrorKind) -> bool:
    """Whether an error says the model is unwell. 429s and other 4xx say nothing about it."""
    return kind in BREAKER_KINDS


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Event(StrEnum):
    ALLOW = "allow"  # a caller asks whether it may call the model
    SUCCESS = "success"
    FAILURE = "failure"  # a breaker-relevant failure (see counts_as_failure)


class Admission(StrEnum):
    ALLOW = "allow"
    PROBE = "probe"  # allowed as one of the half-open trial calls: record(probe=True) after
    REJECT = "reject"


class BreakerConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    consecutive_failures: int = Field(default=5, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=20, ge=1)
    cooldown_s: float = Field(default=15.0, gt=0)
    max_cooldown_s: float = Field(default=120.0, gt=0)
    probes: int = Field(default=1, ge=1)
    probe_ttl_s: float = Field(default=150.0, gt=0)

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> BreakerConfig:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError("max_cooldown_s must be >= cooldown_s")
        return self


@dataclass(frozen=True)
class Decision:
    admission: Admission
    retry_in_s: float  # 0 unless REJECT
    state: BreakerState


@dataclass(frozen=True)
class BreakerValue:
    """One model's breaker, exactly as the Redis hash holds it."""

    state: BreakerState = BreakerState.CLOSED
    failures_in_row: int = 0
    window: tuple[tuple[int, int, int], ...] = ()  # (bucket index, calls, failures), sorted
    opened_at: float = 0.0
    reopens: int = 0  # failed probes since it last closed: the cooldown doubles for each
    probe_leases: tuple[float, ...] = ()  # expiry of each probe slot, sorted


def cooldown_s(value: BreakerValue, config: BreakerConfig) -> float:
    return min(config.max_cooldown_s, config.cooldown_s * 2.0**value.reopens)


def bucket_of(now: float, config: BreakerConfig) -> int:
    return math.floor(now / (config.window_s / WINDOW_BUCKETS))


def window_totals(value: BreakerValue, now: float, config: BreakerConfig) -> tuple[int, int]:
    """(calls, failures) within the window ending at ``now``."""
    oldest = bucket_of(now, config) - WINDOW_BUCKETS
    live = [(c, f) for i, c, f in value.window if i > oldest]
    return sum(c for c, _ in live), sum(f for _, f in live)


def transition(
    value: BreakerValue, event: Event, now: float, config: BreakerConfig, *, probe: bool = False
) -> tuple[BreakerValue, Decision | None]:
    """The next value, and for ALLOW the decision. ``probe``: a SUCCESS/FAILURE is the result
    of a call admitted as PROBE. Results arriving while OPEN, and non-probe results while
    HALF_OPEN, were admitted before the breaker opened: they say nothing about now."""
    if event is Event.ALLOW:
        return _allow(value, now, config)
    return _record(value, event is Event.SUCCESS, probe, now, config), None


def _allow(v: BreakerValue, now: float, c: BreakerConfig) -> tuple[BreakerValue, Decision]:
    if v.state is BreakerState.OPEN:
        wait = v.opened_at + cooldown_s(v, c) - now
        if wait > 0:
            return v, Decision(Admission.REJECT, wait, BreakerState.OPEN)
        v = replace(v, state=BreakerState.HALF_OPEN, probe_leases=())
    if v.state is BreakerState.HALF_OPEN:
        leases = tuple(sorted(e for e in v.probe_leases if e > now))
        if len(leases) < c.probes:
            v = replace(v, probe_leases=tuple(sorted((*leases, now + c.probe_ttl_s))))
            return v, Decision(Admission.PROBE, 0.0, BreakerState.HALF_OPEN)
        wait = min(leases[0] - now, c.cooldown_s)
        return replace(v, probe_leases=leases), Decision(
            Admission.REJECT, wait, BreakerState.HALF_OPEN)
    return v, Decision(Admission.ALLOW, 0.0, BreakerState.CLOSED)


def _record(v: BreakerValue, success: bool, probe: bool, now: float, c: BreakerConfig
            ) -> BreakerValue:
    if v.state is BreakerState.OPEN or (v.state is BreakerState.HALF_OPEN and not probe):
        return v
    if v.state is BreakerState.HALF_OPEN:
        if success:
            return BreakerValue()
        reopens = min(v.reopens + 1, MAX_REOPENS)
        return BreakerValue(state=BreakerState.OPEN, opened_at=now, reopens=reopens)
    current, oldest = bucket_of(now, c), bucket_of(now, c) - WINDOW_BUCKETS
    buckets = {i: (calls, fails) for i, calls, fails in v.window if i > oldest}
    calls, fails = buckets.get(current, (0, 0))
    buckets[current] = (calls + 1, fails + (0 if success else 1))
    window = tuple((i, *buckets[i]) for i in sorted(buckets))
    row = 0 if success else v.failures_in_row + 1
    total = sum(b[0] for b in buckets.values())
    failed = sum(b[1] for b in buckets.values())
    if not success and (row >= c.consecutive_failures
                        or (total >= c.min_calls and failed / total >= c.failure_ratio)):
        return BreakerValue(state=BreakerState.OPEN, opened_at=now)
    return replace(v, failures_in_row=row, window=window)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def parse(raw: Mapping[Any, Any]) -> BreakerValue:
    """A BreakerValue from the Redis hash (HGETALL); a missing hash is a closed breaker."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    calls = {int(k[2:]): int(v) for k, v in fields.items() if k.startswith("c:")}
    fails = {int(k[2:]): int(v) for k, v in fields.items() if k.startswith("f:")}
    return BreakerValue(
        state=BreakerState(fields.get("state", "closed")),
        failures_in_row=int(fields.get("row", 0)),
        window=tuple((i, calls[i], fails.get(i, 0)) for i in sorted(calls)),
        opened_at=float(fields.get("opened_at", 0.0)),
        reopens=int(fields.get("reopens", 0)),
        probe_leases=tuple(sorted(float(v) for k, v in fields.items() if k.startswith("p:"))),
    )


def report(model: str, value: BreakerValue, now: float, config: BreakerConfig
           ) -> dict[str, Any]:
    """What `farm limits` shows for one model."""
    calls, failures = window_totals(value, now, config)
    is_open = value.state is not BreakerState.CLOSED
    remaining = max(0.0, value.opened_at + cooldown_s(value, config) - now)
    return {
        "model": model,
        "state": value.state.value,
        "failures_in_row": value.failures_in_row,
        "window_calls": calls,
        "window_failures": failures,
        "opened_at": value.opened_at if is_open else None,
        "cooldown_s": cooldown_s(value, config),
        "cooldown_remaining_s": remaining if value.state is BreakerState.OPEN else 0.0,
        "probes_in_flight": sum(1 for e in value.probe_leases if e > now),
    }


# KEYS[1]: the model's hash. ARGV: op (allow|success|failure), probe (1|0), now ('' = TIME),
# consecutive_failures, window_s, failure_ratio, min_calls, cooldown_s, max_cooldown_s,
# probes, probe_ttl_s, key ttl (s). Returns {state before, state after, admission, retry_in}.
LUA = """
local key, op, probe = KEYS[1], ARGV[1], ARGV[2] == '1'
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local row_max, window_s, ratio = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local min_calls, cool, max_cool = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local probes, probe_ttl, ttl = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local function fmt(x) return string.format('%.17g', x) end
local state = redis.call('HGET', key, 'state') or 'closed'
local function open_at(reopens)
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'opened_at', fmt(now), 'reopens', reopens)
  redis.call('EXPIRE', key, ttl)
end
local function fields()
  local flat, out = redis.call('HGETALL', key), {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
if op == 'allow' then
  if state == 'closed' then return {state, state, 'allow', '0'} end
  local h = fields()
  if state == 'open' then
    local reopens = tonumber(h['reopens'] or '0')
    local wait = tonumber(h['opened_at']) + math.min(max_cool, cool * 2 ^ reopens) - now
    if wait > 0 then return {state, state, 'reject', fmt(wait)} end
    for k in pairs(h) do
      if string.sub(k, 1, 2) == 'p:' then redis.call('HDEL', key, k); h[k] = nil end
    end
    redis.call('HSET', key, 'state', 'half_open')
  end
  local live, first = 0, nil
  for k, v in pairs(h) do
    if string.sub(k, 1, 2) == 'p:' then
      local e = tonumber(v)
      if e <= now then
        redis.call('HDEL', key, k)
      else
        live = live + 1
        if first == nil or e < first then first = e end
      end
    end
  end
  redis.call('EXPIRE', key, ttl)
  if live < probes then
    local seq = redis.call('HINCRBY', key, 'pseq', 1)
    redis.call('HSET', key, 'p:' .. seq, fmt(now + probe_ttl))
    return {state, 'half_open', 'probe', '0'}
  end
  return {state, 'half_open', 'reject', fmt(math.min(first - now, cool))}
end
local success = op == 'success'
if state == 'open' or (state == 'half_open' and not probe) then
  return {state, state, '', '0'}
end
if state == 'half_open' then
  if success then
    redis.call('DEL', key)
    return {state, 'closed', '', '0'}
  end
  local reopens = tonumber(redis.call('HGET', key, 'reopens') or '0')
  open_at(math.min(reopens + 1, 30))
  return {state, 'open', '', '0'}
end
local current = math.floor(now / (window_s / 10))
local calls, fails = 1, success and 0 or 1
for k, v in pairs(fields()) do
  local kind = string.sub(k, 1, 2)
  if kind == 'c:' or kind == 'f:' then
    if tonumber(string.sub(k, 3)) <= current - 10 then
      redis.call('HDEL', key, k)
    elseif kind == 'c:' then
      calls = calls + tonumber(v)
    else
      fails = fails + tonumber(v)
    end
  end
end
local row = 0
redis.call('HINCRBY', key, 'c:' .. fmt(current), 1)
if success then
  redis.call('HSET', key, 'row', 0)
else
  redis.call('HINCRBY', key, 'f:' .. fmt(current), 1)
  row = redis.call('HINCRBY', key, 'row', 1)
end
redis.call('EXPIRE', key, ttl)
if not success and (row >= row_max or (calls >= min_calls and fails / calls >= ratio)) then
  open_at(0)
  return {state, 'open', '', '0'}
end
return {state, state, '', '0'}
"""


class Breaker:
    """The breakers of all models under ``prefix``; ``clock`` overrides Redis TIME (tests)."""

    def __init__(self, redis_client: Any, config: BreakerConfig, prefix: str = "farm:breaker",
                 *, clock: Callable[[], float] | None = None) -> None:
        self._redis, self.config, self.prefix, self._clock = redis_client, config, prefix, clock
        self._script = redis_client.register_script(LUA)
        c = config
        ttl = math.ceil(c.window_s + c.max_cooldown_s + c.probe_ttl_s) + 60
        self._args = [c.consecutive_failures, repr(c.window_s), repr(c.failure_ratio), c.min_calls,
                      repr(c.cooldown_s), repr(c.max_cooldown_s), c.probes, repr(c.probe_ttl_s),
                      ttl]

    def key(self, model: str) -> str:
        return f"{self.prefix}:{model}"

    def _run(self, model: str, op: str, probe: bool = False) -> tuple[BreakerState, str, float]:
        now = "" if self._clock is None else repr(float(self._clock()))
        before, after, admission, retry_in = (_text(x) for x in self._script(
            keys=[self.key(model)], args=[op, int(probe), now, *self._args]))
        old, new = BreakerState(before), BreakerState(after)
        if old is not new:
            level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
            log.log(level, "breaker for %s: %s -> %s (%s%s)", model, old.value, new.value, op,
                    " of a probe" if probe else "")
        return new, admission, float(retry_in)

    def allow(self, model: str) -> Decision:
        state, admission, retry_in = self._run(model, Event.ALLOW.value)
        return Decision(Admission(admission), retry_in, state)

    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState:
        """After a call admitted by allow(): it succeeded, or failed in a way that
        counts_as_failure(); other outcomes are not recorded."""
        op = Event.SUCCESS if success else Event.FAILURE
        return self._run(model, op.value, probe)[0]

    def value(self, model: str) -> tuple[BreakerValue, float]:
        """The stored value and the clock's now (Redis TIME unless overridden)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self.key(model))
        pipe.time()
        raw, (secs, micros) = pipe.execute()
        now = float(self._clock()) if self._clock is not None else secs + micros / 1_000_000
        return parse(raw), now

    def state(self, model: str) -> dict[str, Any]:
        return report(model, *self.value(model), self.config)

    def reset(self, model: str) -> None:
        """Operator: close the breaker now, forgetting its failures and its doubled cooldown."""
        if self._redis.delete(self.key(model)):
            log.info("breaker for %s: closed by the operator", model)
