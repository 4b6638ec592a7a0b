"""A circuit breaker per model, shared by every worker through Redis.

``LUA`` is ``farm.capacity.circuit.transition`` inside Redis: one atomic round trip per
call, on Redis's clock; the integration tests check the two agree step by step. The
admission gate runs it in the same round trip as the limiter's acquire or release (``call``
builds its keys and args: ``farm.capacity.combined``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from farm.capacity.circuit import (
    Admission,
    BreakerConfig,
    BreakerDecision,
    BreakerState,
    BreakerValue,
    Event,
    report,
)

log = logging.getLogger("farm.breaker")


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
        self.redis, self.config, self.prefix, self._clock = redis_client, config, prefix, clock
        self._script = redis_client.register_script(LUA)
        c = config
        ttl = math.ceil(c.window_s + c.max_cooldown_s + c.probe_ttl_s) + 60
        self._args = [c.consecutive_failures, repr(c.window_s), repr(c.failure_ratio), c.min_calls,
                      repr(c.cooldown_s), repr(c.max_cooldown_s), c.probes, repr(c.probe_ttl_s),
                      ttl]

    def key(self, model: str) -> str:
        return f"{self.prefix}:{model}"

    # --- one step as keys and args, and its reply (farm.capacity.combined runs the step
    # inside a larger script: the limiter's in the same round trip) ------------------------
    def call(self, model: str, op: Event, probe: bool = False) -> tuple[list[str], list[Any]]:
        """The script's keys and args for ``op`` on the model's breaker, now."""
        now = "" if self._clock is None else repr(float(self._clock()))
        return [self.key(model)], [op.value, int(probe), now, *self._args]

    def allowed(self, model: str, raw: Sequence[Any]) -> BreakerDecision:
        """The reply to an ``allow`` call."""
        state, admission, retry_in = self._outcome(model, Event.ALLOW, False, raw)
        return BreakerDecision(Admission(admission), retry_in, state)

    def recorded(self, model: str, op: Event, probe: bool, raw: Sequence[Any]) -> BreakerState:
        """The reply to a ``success`` or ``failure`` call: the state after it."""
        return self._outcome(model, op, probe, raw)[0]

    def _outcome(self, model: str, op: Event, probe: bool, raw: Sequence[Any]
                 ) -> tuple[BreakerState, str, float]:
        before, after, admission, retry_in = (_text(x) for x in raw)
        old, new = BreakerState(before), BreakerState(after)
        if old is not new:
            level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
            log.log(level, "breaker for %s: %s -> %s (%s%s)", model, old.value, new.value,
                    op.value, " of a probe" if probe else "")
        return new, admission, float(retry_in)

    def _run(self, model: str, op: Event, probe: bool = False) -> Sequence[Any]:
        keys, args = self.call(model, op, probe)
        reply: Sequence[Any] = self._script(keys=keys, args=args)
        return reply

    # --- the calls ------------------------------------------------------------------------
    def allow(self, model: str) -> BreakerDecision:
        return self.allowed(model, self._run(model, Event.ALLOW))

    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState:
        """After a call admitted by allow(): it succeeded, or failed in a way that
        counts_as_failure(); other outcomes are not recorded."""
        op = Event.SUCCESS if success else Event.FAILURE
        return self.recorded(model, op, probe, self._run(model, op, probe))

    def value(self, model: str) -> tuple[BreakerValue, float]:
        """The stored value and the clock's now (Redis TIME unless overridden)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key(model))
        pipe.time()
        raw, (secs, micros) = pipe.execute()
        now = float(self._clock()) if self._clock is not None else secs + micros / 1_000_000
        return parse(raw), now

    def state(self, model: str) -> dict[str, Any]:
        return report(model, *self.value(model), self.config)

    def reset(self, model: str) -> None:
        """Operator: close the breaker now, forgetting its failures and its doubled cooldown."""
        if self.redis.delete(self.key(model)):
            log.info("breaker for %s: closed by the operator", model)
