"""The cluster-wide rate limiter: every worker process on every host shares one set of
buckets per model in Redis, so together they stay inside the provider's limits.

Each acquire and release is one EVALSHA of a Lua script: atomic, on Redis server time
(``TIME``), so clocks of the hosts do not matter. The arithmetic is ``farm.capacity.limits``'s,
step for step (``acquire``, ``settle``, ``observe``, ``pause``, ``throttle`` are its Python
twins); the scripts are in ``farm.capacity.scripts``. The admission gate sends the acquire
and the release in the same round trip as the breaker's step (``acquire_call`` and
``release_call`` build them: ``farm.capacity.combined``).

Keys, all under the prefix P (default ``farm:lim``), M the model, T the tenant:
  P:m:M:bucket          hash  t, rpm, itpm, otpm (levels at time t)   EX 180 s (full by then)
  P:m:M:observed        hash  rpm, itpm, otpm limits from headers      EX 1 day, renewed
  P:m:M:paused          str   paused-until (Redis time)                PX pause + 60 s
  P:m:M:throttle        str   percent                                  none: operator's setting
  P:m:M:base            str   rpm the throttle takes its percent of    as long as the throttle
  P:m:M:rate            hash  n (decayed count of grants), t           EX 5 * tenant window
  P:m:M:burst           hash  s (learned burst, seconds), t            EX probe + 60 s
  P:m:M:answered        str   "1": the provider has answered a call    EX 1 day, renewed
  P:m:M:starved         hash  tenant, n, t, until (farm.capacity.fairness) EX its wait + 2 s
  P:m:M:tenants         zset  tenant -> last ask                       EX 2 * tenant window
  P:m:M:inflight        zset  "grant|tenant" -> expiry                 EX grant ttl + 1
  P:m:M:t:T:usage       hash  n (decayed granted count), t             EX 5 * tenant window
  P:m:M:t:T:inflight    zset  grant -> expiry                          EX grant ttl + 1
  P:models              set   models seen (observed, paused, throttled) EX 7 days, renewed
  P:queues:paused       set   queues whose jobs the workers defer      none: operator's setting
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.capacity.config import LimiterConfig
from farm.capacity.fairness import Starved, TenantUsage
from farm.capacity.headers import parse_headers
from farm.capacity.limits import (
    KINDS,
    OVER_SHARE_RESERVE,
    PRIORITY_ORDER,
    Grant,
    ModelState,
    NothingToThrottle,
    Wait,
    check_pause,
    check_percent,
    check_request,
    describe,
    promote,
)
from farm.capacity.pacing import Burst
from farm.capacity.scripts import ACQUIRE, OBSERVE, PAUSE, RELEASE, THROTTLE
from farm.costs.budgets import Seed
from farm.costs.ledger import Charge, OverBudget, over_budget
from farm.jobs import Priority

__all__ = ["Acquiring", "Grant", "Limiter", "LimiterConfig", "Wait"]


@dataclass(frozen=True)
class Acquiring:
    """One acquire, ready to send: its script keys and args, and what its reply is read with."""

    model: str
    gid: str
    tenant: str
    input_tokens: int
    output_tokens: int
    charge: Charge | None
    keys: tuple[str, ...]
    args: tuple[str, ...]


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
        self._throttle = redis_client.register_script(THROTTLE)
        c = config
        self._common = [_arg(c.target), *(_arg(c.reserve[p]) for p in PRIORITY_ORDER),
                        *(_arg(c.concurrency_share[p]) for p in PRIORITY_ORDER),
                        _arg(c.tenant_window_s), _arg(c.grant_ttl_s), _arg(c.slot_wait_s),
                        _arg(OVER_SHARE_RESERVE), _arg(c.max_delay_s)]
        self._pacing = [_arg(c.burst_s), _arg(c.min_burst_s), _arg(c.burst_probe_s)]

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
                tenant: str, waited_s: float = 0.0, charge: Charge | None = None,
                ) -> Grant | Wait | Seed | OverBudget:
        """A Grant (release it when the call is done) or how long to wait and why. With a
        ``charge``, the budgets and cost breakers it names are checked and reserved in the
        same step: Seed (rebuild a period's spend first, then ask again) or OverBudget."""
        call = self.acquire_call(model, input_tokens=input_tokens, output_tokens=output_tokens,
                                 priority=priority, tenant=tenant, waited_s=waited_s,
                                 charge=charge)
        return self.acquired(call, self._acquire(keys=call.keys, args=call.args))

    def acquire_call(self, model: str, *, input_tokens: int, output_tokens: int,
                     priority: Priority, tenant: str, waited_s: float = 0.0,
                     charge: Charge | None = None) -> Acquiring:
        """acquire() as keys and args, not sent (farm.capacity.combined sends it with the
        breaker's allow); ``acquired`` reads the script's reply."""
        check_request(input_tokens, output_tokens, tenant)
        prio = promote(self.config, Priority(priority), waited_s)
        gid = uuid.uuid4().hex
        keys = [self._key(model, k) for k in
                ("bucket", "observed", "paused", "throttle", "tenants", "inflight")]
        keys += [self._tkey(model, tenant, "usage"), self._tkey(model, tenant, "inflight"),
                 self._key(model, "base"), self._key(model, "rate"), self._key(model, "burst"),
                 self._key(model, "answered"), self._key(model, "starved")]
        limits = self.config.limits_for(model)
        args = [self._now_arg(), gid, tenant, str(int(input_tokens)), str(int(output_tokens)),
                str(PRIORITY_ORDER.index(prio)), *self._configured(model),
                _arg(limits.max_concurrency), *self._common, *self._pacing,
                str(self.config.discovery_slots)]
        if charge is not None:
            keys += charge.keys
            args += charge.args
        return Acquiring(model, gid, tenant, int(input_tokens), int(output_tokens), charge,
                         tuple(keys), tuple(args))

    @staticmethod
    def acquired(call: Acquiring, result: Sequence[Any]) -> Grant | Wait | Seed | OverBudget:
        """The acquire script's reply to ``call``."""
        code, charge = int(result[0]), call.charge
        if code == 0:
            return Wait(float(_text(result[2])), _text(result[1]),
                        opened=len(result) > 3 and _text(result[3]) == "opened",
                        over_share=len(result) > 4 and _text(result[4]) == "over")
        if code == 3:
            return Seed(int(result[1]) - 1)
        if code == 4:
            assert charge is not None
            return over_budget(charge, result)
        if code == 2:  # no limits at all: nothing charged, nothing to release
            return Grant(call.model, "", call.tenant, call.input_tokens, call.output_tokens,
                         charge=charge)
        return Grant(call.model, call.gid, call.tenant, call.input_tokens, call.output_tokens,
                     delay_s=float(_text(result[1])) if len(result) > 1 else 0.0,
                     charge=charge)

    def release(self, grant: Grant, *, input_tokens: int | None = None,
                output_tokens: int | None = None) -> None:
        """Free the slot; with actual usage, refund (or charge) the reservation's difference.
        Releasing twice, or a grant that expired, changes nothing. Never raises for bad
        usage figures (it runs in cleanup paths): negative ones count as 0."""
        call = self.release_call(grant, input_tokens=input_tokens, output_tokens=output_tokens)
        if call is not None:
            self._release(keys=call[0], args=call[1])

    def release_call(self, grant: Grant, *, input_tokens: int | None = None,
                     output_tokens: int | None = None) -> tuple[list[str], list[str]] | None:
        """release() as keys and args, not sent; None: there is nothing to release."""
        if not grant.grant_id:  # granted while the model had no limits: nothing to undo
            return None
        m = grant.model
        input_tokens = None if input_tokens is None else max(0, int(input_tokens))
        output_tokens = None if output_tokens is None else max(0, int(output_tokens))
        keys = [self._key(m, "bucket"), self._key(m, "observed"), self._key(m, "throttle"),
                self._key(m, "inflight"), self._tkey(m, grant.tenant, "inflight"),
                self._key(m, "base"), self._key(m, "burst"), self._key(m, "answered")]
        args = [self._now_arg(), f"{grant.grant_id}|{grant.tenant}", grant.grant_id,
                str(grant.input_tokens), str(grant.output_tokens), _arg(input_tokens),
                _arg(output_tokens), *self._configured(m), _arg(self.config.target),
                *self._pacing, str(self.config.discovery_slots)]
        return keys, args

    # --- following the provider ---------------------------------------------------------
    def pause(self, model: str, seconds: float) -> None:
        """After a 429: every worker waits; the pause only ever gets longer; a 429 that
        starts one halves the model's burst (``farm.capacity.pacing``)."""
        self._pause(keys=[self._key(model, "paused"), f"{self.prefix}:models",
                          self._key(model, "burst")],
                    args=[self._now_arg(), _arg(check_pause(seconds)), model, *self._pacing])

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        """An answer from the provider (ends the model's discovery) and its rate-limit
        headers to follow (see ``farm.capacity.limits.observe``)."""
        now = self._clock() if self._clock is not None else time.time()
        seen = parse_headers(headers, now)
        keys = [self._key(model, "observed"), self._key(model, "bucket"),
                self._key(model, "throttle"), f"{self.prefix}:models", self._key(model, "base"),
                self._key(model, "burst"), self._key(model, "answered")]
        args = [self._now_arg(), model, *(_arg(seen.limits.get(k)) for k in KINDS),
                *(_arg(seen.remaining.get(k)) for k in KINDS), *self._configured(model),
                _arg(self.config.target), *self._pacing, _arg(seen.burst_s)]
        self._observe(keys=keys, args=args)

    # --- operators ----------------------------------------------------------------------
    def throttle(self, model: str, percent: float | None) -> float | None:
        """Use only ``percent`` (1..100) of the model's limits; None or 100 clears. For a
        model with no limits at all, returns the rpm base the percent is taken of (its
        recent rate); raises NothingToThrottle when it has made no calls lately."""
        value = check_percent(percent)
        keys = [self._key(model, k) for k in ("throttle", "base", "rate", "observed")]
        args = [self._now_arg(), model, _arg(value), *self._configured(model),
                _arg(self.config.tenant_window_s),
                _arg(self.config.limits_for(model).max_concurrency)]
        done, base = self._throttle(keys=[*keys, f"{self.prefix}:models"], args=args)
        if int(done) == 0:
            raise NothingToThrottle(model, float(_text(base)))
        return float(_text(base)) if _text(base) else None

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
        pipe.get(self._key(model, "base"))
        pipe.hmget(self._key(model, "rate"), "n", "t")
        pipe.hmget(self._key(model, "burst"), "s", "t")
        pipe.exists(self._key(model, "answered"))
        pipe.hmget(self._key(model, "starved"), "tenant", "n", "t", "until")
        pipe.time()
        (bucket, obs, paused, thr, active_raw, inflight_raw, base, (rate_n, rate_t),
         (burst_s, burst_t), answered, starved, (sec, usec)) = pipe.execute()
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
            active=active, usage=usage, inflight=inflight,
            rate=None if rate_n is None else TenantUsage(float(_text(rate_n)),
                                                         float(_text(rate_t))),
            throttle_base=None if base is None else float(_text(base)),
            burst=None if burst_s is None or burst_t is None else Burst(
                float(_text(burst_s)), float(_text(burst_t))),
            answered=bool(answered),
            starved=None if None in starved else Starved(
                _text(starved[0]), float(_text(starved[1])), float(_text(starved[2])),
                float(_text(starved[3]))))
        return state, now

    def snapshot(self, model: str) -> dict[str, Any]:
        """Configured, observed and effective limits, levels, in-flight, pause, throttle and
        active tenants of one model, for `farm limits`."""
        state, now = self.read_state(model)
        return describe(self.config, model, state, now)
