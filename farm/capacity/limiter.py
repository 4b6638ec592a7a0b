"""The cluster-wide rate limiter: every worker process on every host shares one set of
buckets per model in Redis, so together they stay inside the provider's limits.

Each acquire and release is one EVALSHA of a Lua script: atomic, on Redis server time
(``TIME``), so clocks of the hosts do not matter. The arithmetic is ``farm.capacity.limits``'s,
step for step (``acquire``, ``settle``, ``observe``, ``pause`` are its Python twins).

Keys, all under the prefix P (default ``farm:lim``), M the model, T the tenant:
  P:m:M:bucket          hash  t, rpm, itpm, otpm (levels at time t)   EX 180 s (full by then)
  P:m:M:observed        hash  rpm, itpm, otpm limits from headers      EX 1 day, renewed
  P:m:M:paused          str   paused-until (Redis time)                PX pause + 60 s
  P:m:M:throttle        str   percent                                  none: operator's setting
  P:m:M:tenants         zset  tenant -> last ask                       EX 2 * tenant window
  P:m:M:inflight        zset  "grant|tenant" -> expiry                 EX grant ttl + 1
  P:m:M:t:T:usage       hash  n (decayed granted count), t             EX 5 * tenant window
  P:m:M:t:T:inflight    zset  grant -> expiry                          EX grant ttl + 1
  P:models              set   models seen (observed, paused, throttled) EX 7 days, renewed
  P:queues:paused       set   queues whose jobs the workers defer      none: operator's setting
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from farm.capacity.limits import (
    KINDS,
    LOW_EXTRA_RESERVE,
    PRIORITY_ORDER,
    Grant,
    LimiterConfig,
    ModelState,
    TenantUsage,
    Wait,
    check_pause,
    check_percent,
    check_request,
    describe,
    parse_headers,
    promote,
)
from farm.jobs import Priority

__all__ = ["Grant", "Limiter", "LimiterConfig", "Wait"]

OBSERVED_TTL_S = 86_400
MODELS_TTL_S = 7 * 86_400

# Shared by the scripts. Numbers go to Redis as '%.17g' strings: exact round trips, so the
# script and the Python twin compute on the very same doubles.
PRELUDE = r"""
local KINDS = {'rpm', 'itpm', 'otpm'}
local LN2 = 0.6931471805599453
local EPS = 1e-9
local function num(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end
local function fmt(x) return string.format('%.17g', x) end
local function clock(arg)
  local now = num(arg)
  if now then return now end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function caps_of(obs_key, thr_key, c1, c2, c3, target)
  local obs = redis.call('HMGET', obs_key, 'rpm', 'itpm', 'otpm')
  local thr = num(redis.call('GET', thr_key)) or 100
  local conf = {num(c1), num(c2), num(c3)}
  local caps, any = {}, false
  for i, k in ipairs(KINDS) do
    local base = num(obs[i]) or conf[i]
    if base then caps[k] = base * (thr / 100) * target; any = true end
  end
  return caps, any, thr
end
local function refill(bkey, caps, now)
  local raw = redis.call('HMGET', bkey, 't', 'rpm', 'itpm', 'otpm')
  local t, lv = num(raw[1]), {}
  for i, k in ipairs(KINDS) do
    local cap = caps[k]
    if cap then
      local old = num(raw[i + 1])
      if old == nil or t == nil then lv[k] = cap
      else lv[k] = math.min(cap, old + math.max(0, now - t) * (cap / 60)) end
    end
  end
  return lv
end
local function store(bkey, caps, lv, now)
  local args = {'t', fmt(now)}
  for _, k in ipairs(KINDS) do
    if caps[k] then args[#args + 1] = k; args[#args + 1] = fmt(lv[k]) end
  end
  redis.call('HSET', bkey, unpack(args))
  redis.call('EXPIRE', bkey, 180)
end
"""

# KEYS: bucket observed paused throttle tenants inflight t-usage t-inflight
# ARGV: now gid tenant in out prio rpm itpm otpm conc target res1..3 share1..3 window ttl
#       slot_wait low_extra max_delay
ACQUIRE = PRELUDE + r"""
local now = clock(ARGV[1])
local gid, tenant = ARGV[2], ARGV[3]
local paused = num(redis.call('GET', KEYS[3]))
if paused and paused > now then return {0, 'paused (429)', fmt(paused - now)} end
local target = tonumber(ARGV[11])
local caps, any, thr = caps_of(KEYS[2], KEYS[4], ARGV[7], ARGV[8], ARGV[9], target)
local mc, conc = num(ARGV[10]), nil
if mc then conc = math.max(1, math.floor(mc * thr / 100 + EPS)) end
if not any and conc == nil then return {2} end
local idx = tonumber(ARGV[6])
local window, ttl = tonumber(ARGV[18]), tonumber(ARGV[19])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now - window))
redis.call('ZADD', KEYS[5], fmt(now), tenant)
redis.call('EXPIRE', KEYS[5], math.ceil(2 * window))
local n_active = redis.call('ZCARD', KEYS[5])
local half = window / 2
local u = redis.call('HMGET', KEYS[7], 'n', 't')
local used = 0
if num(u[1]) and num(u[2]) then used = num(u[1]) * 2 ^ (-(now - num(u[2])) / half) end
local extra = 0
if caps.rpm and n_active > 1 and used > caps.rpm / 60 / n_active * half / LN2 then
  if idx == 2 then extra = tonumber(ARGV[21]) end
  idx = math.min(idx + 1, 2)
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', fmt(now))
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', fmt(now))
if conc then
  local cap = math.max(1, math.floor(conc * tonumber(ARGV[15 + idx]) + EPS))
  if redis.call('ZCARD', KEYS[6]) >= cap then return {0, 'concurrency', ARGV[20]} end
  if n_active > 1 and redis.call('ZCARD', KEYS[8]) >= math.ceil(conc / n_active) then
    return {0, 'tenant-concurrency', ARGV[20]}
  end
end
local lv = refill(KEYS[1], caps, now)
local costs = {rpm = 1, itpm = tonumber(ARGV[4]), otpm = tonumber(ARGV[5])}
local share = math.min(1, tonumber(ARGV[12 + idx]) + extra)
local wait, reason, delay = 0, nil, 0
local max_delay = tonumber(ARGV[22])
for _, k in ipairs(KINDS) do
  local cap = caps[k]
  if cap then
    local need = math.min(costs[k] + share * cap, cap)
    if lv[k] < need then
      local ahead = (need - lv[k]) / (cap / 60)
      delay = math.max(delay, ahead)
      if ahead - max_delay > wait then wait, reason = ahead - max_delay, k end
    end
  end
end
if reason then return {0, reason, fmt(wait)} end
for _, k in ipairs(KINDS) do
  if caps[k] then lv[k] = math.max(-caps[k], lv[k] - costs[k]) end
end
store(KEYS[1], caps, lv, now)
redis.call('HSET', KEYS[7], 'n', fmt(used + 1), 't', fmt(now))
redis.call('EXPIRE', KEYS[7], math.ceil(5 * window))
redis.call('ZADD', KEYS[6], fmt(now + ttl), gid .. '|' .. tenant)
redis.call('ZADD', KEYS[8], fmt(now + ttl), gid)
redis.call('EXPIRE', KEYS[6], math.ceil(ttl) + 1)
redis.call('EXPIRE', KEYS[8], math.ceil(ttl) + 1)
return {1, fmt(delay)}
"""

# KEYS: bucket observed throttle inflight t-inflight
# ARGV: now member gid reserved_in reserved_out actual_in actual_out rpm itpm otpm target
RELEASE = PRELUDE + r"""
local removed = redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[3])
if removed == 0 then return 0 end
local ai, ao = num(ARGV[6]), num(ARGV[7])
if ai == nil and ao == nil then return 1 end
local now = clock(ARGV[1])
local caps, any = caps_of(KEYS[2], KEYS[3], ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11]))
if not any then return 1 end
local lv = refill(KEYS[1], caps, now)
local fix = {itpm = {tonumber(ARGV[4]), ai}, otpm = {tonumber(ARGV[5]), ao}}
for k, pair in pairs(fix) do
  if pair[2] and caps[k] then
    lv[k] = math.max(-caps[k], math.min(caps[k], lv[k] + (pair[1] - pair[2])))
  end
end
store(KEYS[1], caps, lv, now)
return 1
"""

# KEYS: observed bucket throttle models
# ARGV: now model limit_rpm limit_itpm limit_otpm rem_rpm rem_itpm rem_otpm rpm itpm otpm target
OBSERVE = PRELUDE + r"""
local now = clock(ARGV[1])
for i, k in ipairs(KINDS) do
  local v = num(ARGV[2 + i])
  if v then redis.call('HSET', KEYS[1], k, ARGV[2 + i]); redis.call('EXPIRE', KEYS[1], 86400) end
end
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('EXPIRE', KEYS[4], 604800)
local target = tonumber(ARGV[12])
local caps = caps_of(KEYS[1], KEYS[3], ARGV[9], ARGV[10], ARGV[11], target)
local lower = false
for i, k in ipairs(KINDS) do
  if num(ARGV[5 + i]) and caps[k] then lower = true end
end
if not lower then return 0 end
local lv = refill(KEYS[2], caps, now)
for i, k in ipairs(KINDS) do
  local rem = num(ARGV[5 + i])
  if rem and caps[k] then lv[k] = math.min(lv[k], rem * target) end
end
store(KEYS[2], caps, lv, now)
return 1
"""

# KEYS: paused models   ARGV: now seconds model
PAUSE = PRELUDE + r"""
local now, secs = clock(ARGV[1]), tonumber(ARGV[2])
local untl = now + secs
local old = num(redis.call('GET', KEYS[1]))
if old == nil or old < untl then
  redis.call('SET', KEYS[1], fmt(untl), 'PX', math.ceil(secs * 1000) + 60000)
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], 604800)
return 1
"""


def _arg(value: float | int | None) -> str:
    """A number as the script reads it: '' for None, floats exactly (shortest repr)."""
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Limiter:
    """Acquire/release against the shared buckets; every call is one round trip."""

    def __init__(self, redis_client: Any, config: LimiterConfig, prefix: str = "farm:lim", *,
                 clock: Callable[[], float] | None = None) -> None:
        """``clock`` replaces Redis TIME; tests only (to compare with ``farm.capacity.limits``)."""
        self.redis, self.config, self.prefix, self._clock = redis_client, config, prefix, clock
        self._acquire = redis_client.register_script(ACQUIRE)
        self._release = redis_client.register_script(RELEASE)
        self._observe = redis_client.register_script(OBSERVE)
        self._pause = redis_client.register_script(PAUSE)
        c = config
        self._common = [_arg(c.target), *(_arg(c.reserve[p]) for p in PRIORITY_ORDER),
                        *(_arg(c.concurrency_share[p]) for p in PRIORITY_ORDER),
                        _arg(c.tenant_window_s), _arg(c.grant_ttl_s), _arg(c.slot_wait_s),
                        _arg(LOW_EXTRA_RESERVE), _arg(c.max_delay_s)]

    # --- keys ---------------------------------------------------------------------------
    def _key(self, model: str, what: str) -> str:
        return f"{self.prefix}:m:{model}:{what}"

    def _tkey(self, model: str, tenant: str, what: str) -> str:
        return f"{self.prefix}:m:{model}:t:{tenant}:{what}"

    def _now_arg(self) -> str:
        return "" if self._clock is None else _arg(float(self._clock()))

    def _configured(self, model: str) -> list[str]:
        limits = self.config.limits_for(model)
        return [_arg(limits.rate(k)) for k in KINDS]

    # --- the hot path -------------------------------------------------------------------
    def acquire(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
                tenant: str, waited_s: float = 0.0) -> Grant | Wait:
        """A Grant (release it when the call is done) or how long to wait and why."""
        check_request(input_tokens, output_tokens, tenant)
        prio = promote(self.config, Priority(priority), waited_s)
        gid = uuid.uuid4().hex
        keys = [self._key(model, k) for k in
                ("bucket", "observed", "paused", "throttle", "tenants", "inflight")]
        keys += [self._tkey(model, tenant, "usage"), self._tkey(model, tenant, "inflight")]
        limits = self.config.limits_for(model)
        args = [self._now_arg(), gid, tenant, str(int(input_tokens)), str(int(output_tokens)),
                str(PRIORITY_ORDER.index(prio)), *self._configured(model),
                _arg(limits.max_concurrency), *self._common]
        result = self._acquire(keys=keys, args=args)
        if int(result[0]) == 0:
            return Wait(float(_text(result[2])), _text(result[1]))
        if int(result[0]) == 2:  # no limits at all: nothing charged, nothing to release
            return Grant(model, "", tenant, int(input_tokens), int(output_tokens))
        return Grant(model, gid, tenant, int(input_tokens), int(output_tokens),
                     delay_s=float(_text(result[1])) if len(result) > 1 else 0.0)

    def release(self, grant: Grant, *, input_tokens: int | None = None,
                output_tokens: int | None = None) -> None:
        """Free the slot; with actual usage, refund (or charge) the reservation's difference.
        Releasing twice, or a grant that expired, changes nothing. Never raises for bad
        usage figures (it runs in cleanup paths): negative ones count as 0."""
        if not grant.grant_id:  # granted while the model had no limits: nothing to undo
            return
        m = grant.model
        input_tokens = None if input_tokens is None else max(0, int(input_tokens))
        output_tokens = None if output_tokens is None else max(0, int(output_tokens))
        keys = [self._key(m, "bucket"), self._key(m, "observed"), self._key(m, "throttle"),
                self._key(m, "inflight"), self._tkey(m, grant.tenant, "inflight")]
        args = [self._now_arg(), f"{grant.grant_id}|{grant.tenant}", grant.grant_id,
                str(grant.input_tokens), str(grant.output_tokens), _arg(input_tokens),
                _arg(output_tokens), *self._configured(m), _arg(self.config.target)]
        self._release(keys=keys, args=args)

    # --- following the provider ---------------------------------------------------------
    def pause(self, model: str, seconds: float) -> None:
        """After a 429: every worker waits; the pause only ever gets longer."""
        self._pause(keys=[self._key(model, "paused"), f"{self.prefix}:models"],
                    args=[self._now_arg(), _arg(check_pause(seconds)), model])

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        """Follow the anthropic-ratelimit-* response headers (see ``farm.limits.observe``)."""
        seen = parse_headers(headers)
        if not (seen.limits or seen.remaining):
            return
        keys = [self._key(model, "observed"), self._key(model, "bucket"),
                self._key(model, "throttle"), f"{self.prefix}:models"]
        args = [self._now_arg(), model, *(_arg(seen.limits.get(k)) for k in KINDS),
                *(_arg(seen.remaining.get(k)) for k in KINDS), *self._configured(model),
                _arg(self.config.target)]
        self._observe(keys=keys, args=args)

    # --- operators ----------------------------------------------------------------------
    def throttle(self, model: str, percent: float | None) -> None:
        """Use only ``percent`` (1..100) of the model's limits; None or 100 clears."""
        value = check_percent(percent)
        pipe = self.redis.pipeline(transaction=False)
        if value is None:
            pipe.delete(self._key(model, "throttle"))
        else:
            pipe.set(self._key(model, "throttle"), _arg(value))
        pipe.sadd(f"{self.prefix}:models", model)
        pipe.expire(f"{self.prefix}:models", MODELS_TTL_S)
        pipe.execute()

    def pause_queue(self, queue: str) -> None:
        self.redis.sadd(f"{self.prefix}:queues:paused", queue)

    def resume_queue(self, queue: str) -> None:
        self.redis.srem(f"{self.prefix}:queues:paused", queue)

    def paused_queues(self) -> set[str]:
        return {_text(q) for q in self.redis.smembers(f"{self.prefix}:queues:paused")}

    # --- reading ------------------------------------------------------------------------
    def models(self) -> list[str]:
        seen = {_text(m) for m in self.redis.smembers(f"{self.prefix}:models")}
        return sorted(seen | set(self.config.models))

    def read_state(self, model: str, tenants: Iterable[str] = ()) -> tuple[ModelState, float]:
        """The model's state as ``farm.capacity.limits`` sees it, and now (two trips)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._key(model, "bucket"))
        pipe.hgetall(self._key(model, "observed"))
        pipe.get(self._key(model, "paused"))
        pipe.get(self._key(model, "throttle"))
        pipe.zrange(self._key(model, "tenants"), 0, -1, withscores=True)
        pipe.zrange(self._key(model, "inflight"), 0, -1, withscores=True)
        pipe.time()
        bucket, obs, paused, thr, active_raw, inflight_raw, (sec, usec) = pipe.execute()
        now = float(self._clock()) if self._clock else int(sec) + int(usec) / 1_000_000
        bucket = {_text(k): float(_text(v)) for k, v in bucket.items()}
        inflight: dict[str, tuple[str, float]] = {}
        for member, score in inflight_raw:
            gid, _, tenant = _text(member).partition("|")
            inflight[gid] = (tenant, float(score))
        active = {_text(t): float(s) for t, s in active_raw}
        names = sorted(set(active) | {t for t, _ in inflight.values()} | set(tenants))
        pipe = self.redis.pipeline(transaction=False)
        for tenant in names:
            pipe.hmget(self._tkey(model, tenant, "usage"), "n", "t")
        usage = {t: TenantUsage(float(_text(n)), float(_text(u)))
                 for t, (n, u) in zip(names, pipe.execute(), strict=True) if n is not None}
        state = ModelState(
            levels={k: v for k, v in bucket.items() if k in KINDS}, updated=bucket.get("t"),
            observed={_text(k): int(_text(v)) for k, v in obs.items()},
            throttle=float(_text(thr)) if thr is not None else None,
            paused_until=float(_text(paused)) if paused is not None else None,
            active=active, usage=usage, inflight=inflight)
        return state, now

    def snapshot(self, model: str) -> dict[str, Any]:
        """Configured, observed and effective limits, levels, in-flight, pause, throttle and
        active tenants of one model, for `farm limits`."""
        state, now = self.read_state(model)
        return describe(self.config, model, state, now)
