"""Rate-limit arithmetic, pure: config values and the twin of the limiter's Lua script.

``farm.capacity.limiter`` runs this arithmetic inside Redis (one atomic script per call, on Redis
time) so that every worker process on every host shares one set of buckets. The functions
here do exactly the same steps, in the same order and with the same float operations, on
an explicit ``ModelState`` and ``now``: the unit tests cover them exhaustively and the
integration tests check that the script and this twin agree step by step.

Buckets: effective limit L per minute = (observed limit, else configured) * throttle% *
target; the bucket holds B seconds of it, size = L * B / 60 (B = the burst in force,
``farm.capacity.pacing``: 5 s unless the provider enforces shorter intervals), refills L/60
per second and starts full. A request costs 1 request, its estimated input tokens and its
max_tokens as output tokens (the provider reserves max_tokens and refunds the rest); one
larger than the bucket costs the bucket's size to get in (it passes when the bucket is full)
and its whole cost is charged. Debt goes down to one minute of the rate (-L).

Scheduling ahead: a grant may take tokens that the bucket will only hold within
max_delay_s (D of the rate): the level goes into debt and the caller sleeps delay_s until
they exist, so waiting calls line up one behind the other at the rate.

Priorities: a request of priority p passes a bucket only if, after it, the bucket keeps
reserve[p] of its span (size + D, from the deepest debt a grant may leave to full):
level - cost >= -D + reserve[p] * (size + D). HIGH (reserve 0) may schedule the whole D
ahead; lower priorities stop earlier, and a large enough reserve keeps them out of debt.
Fairness (farm.capacity.fairness): while a tenant with few recent grants waits, one with
markedly more is over its fair share: it takes a rate limit's token only when the bucket is
full (its reserve is the whole span, OVER_SHARE_RESERVE), one priority lower's share of
the slots, and its waits say so (the worker gives the slot back). Among N active tenants
(those that asked within the window) a tenant holds at most ceil(conc/N) of the slots.

Discovery: a model with no limits known (none configured, none learned, no throttle) that
has never been answered gets ``discovery_slots`` calls in flight, as if it had that
concurrency limit: its first answer's headers tell the limits before the slots fill. One
with configured limits starts with buckets of ``min_burst_s`` until its first answer tells
the burst the provider allows (calls go at the rate meanwhile, not in a burst).

Throttle of a model with no limits at all: every grant of every model (limited or not) is
counted with the same decay, so the model's recent rate is known: count * ln 2 / H per
second. Throttling such a model takes that rate, as requests per minute, as its base and
keeps it while the throttle lasts (measured again under the throttle, the rate would only
ratchet down): rpm capacity = base * throttle% * target. With no calls to measure (under one
a minute) there is nothing to take a percent of, and the throttle is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from farm.capacity.config import LimiterConfig
from farm.capacity.fairness import Starved, TenantUsage, decayed, over_share, starve
from farm.capacity.headers import Observation
from farm.capacity.pacing import Burst, burst_now, halved, lowered
from farm.costs.ledger import Charge
from farm.jobs import Priority

KINDS = ("rpm", "itpm", "otpm")
PRIORITY_ORDER = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
LN2 = 0.6931471805599453  # written out: the Lua script uses the very same constant
OVER_SHARE_RESERVE = 1.0  # a tenant over its fair share leaves the whole span: a full bucket
EPS = 1e-9  # floor(10 * 0.95) must not become 9 through 9.4999999
# the wait of a model in discovery whose slots are taken: the worker that has had an answer
# from it tells it again (Redis lost the answer, or a grant whose release it lost holds the
# slot until grant_ttl_s)
DISCOVERY = "discovery"
MIN_BASE_RPM = 1.0  # a throttle base below one call a minute is no traffic at all


@dataclass(frozen=True)
class Grant:
    model: str
    grant_id: str
    tenant: str
    input_tokens: int
    output_tokens: int
    delay_s: float = 0.0  # sleep this long before the call: its tokens exist only then
    charge: Charge | None = None  # what the call reserved in the budgets (farm.costs.ledger)


@dataclass(frozen=True)
class Wait:
    wait_s: float
    reason: str
    opened: bool = False  # the cost breaker opened with this refusal (farm.costs.ledger)
    over_share: bool = False  # the tenant is over its fair share: give the slot back


@dataclass(frozen=True)
class ModelState:
    """Everything the limiter keeps for one model; an empty state is a fresh model.

    Mirrors the Redis keys: an absent level or ``updated is None`` is a full bucket.
    The mappings are never mutated: every step builds new ones.
    """

    levels: Mapping[str, float] = field(default_factory=dict)
    updated: float | None = None
    observed: Mapping[str, int] = field(default_factory=dict)
    throttle: float | None = None
    paused_until: float | None = None
    active: Mapping[str, float] = field(default_factory=dict)  # tenant -> last ask
    usage: Mapping[str, TenantUsage] = field(default_factory=dict)
    inflight: Mapping[str, tuple[str, float]] = field(default_factory=dict)  # id -> tenant, exp
    rate: TenantUsage | None = None  # decayed count of the model's grants (all tenants)
    throttle_base: float | None = None  # rpm a throttle takes its percent of (no rpm limit)
    burst: Burst | None = None  # learned from the provider (farm.capacity.pacing)
    starved: Starved | None = None  # the refused tenant with the fewest recent grants
    answered: bool = False  # the provider has answered a call of this model


@dataclass(frozen=True)
class Effective:
    caps: Mapping[str, float]  # kind -> effective limit per minute (only limited kinds)
    concurrency: int | None
    throttle: float
    burst_s: float = 60.0  # the buckets hold this many seconds of their rate
    discovering: bool = False  # concurrency is discovery_slots until the first answer

    def size(self, kind: str) -> float:
        """The bucket's capacity: burst_s seconds of the rate."""
        return self.caps[kind] * self.burst_s / 60

    @property
    def unlimited(self) -> bool:
        return not self.caps and self.concurrency is None


def check_request(input_tokens: int, output_tokens: int, tenant: str) -> None:
    """What an acquire must be given: token counts >= 0, a tenant without '|' (the key
    separator of in-flight grants)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("input_tokens and output_tokens must be >= 0")
    if not tenant or "|" in tenant:
        raise ValueError(f"tenant must be non-empty and without '|': {tenant!r}")


def check_pause(seconds: float) -> float:
    """A pause length: finite and >= 0."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"pause seconds must be finite and >= 0, got {seconds!r}")
    return float(seconds)


def check_percent(percent: float | None) -> float | None:
    """A throttle percent in [1, 100]; None (or 100) means no throttle."""
    if percent is None:
        return None
    if not (isinstance(percent, int | float) and 1.0 <= percent <= 100.0):
        raise ValueError(f"throttle percent must be between 1 and 100, got {percent!r}")
    return None if percent == 100 else float(percent)


class NothingToThrottle(ValueError):
    """A throttle of a model that has no limits and no recent calls to measure."""

    def __init__(self, model: str, measured_rpm: float) -> None:
        super().__init__(
            f"{model} has no limits (none configured, none learned from the "
            f"provider's headers) and made {measured_rpm:.2g} calls a minute lately: there is "
            "no rate to take a percent of")
        self.model, self.measured_rpm = model, measured_rpm


def effective(config: LimiterConfig, model: str, state: ModelState, now: float) -> Effective:
    limits, thr = config.limits_for(model), state.throttle or 100.0
    caps: dict[str, float] = {}
    for kind in KINDS:
        base: float | None = state.observed.get(kind) or limits.rate(kind)
        if not base and kind == "rpm" and state.throttle is not None:
            base = state.throttle_base
        if base:
            caps[kind] = base * (thr / 100) * config.target
    conc, discovering = None, False
    if limits.max_concurrency is not None:
        conc = max(1, math.floor(limits.max_concurrency * thr / 100 + EPS))
    elif not caps and config.discovery_slots and not state.answered:
        conc = config.discovery_slots  # nothing known yet: wait for the first answer
        discovering = True
    burst = burst_now(config, state.burst, now)
    if config.discovery_slots and not state.answered:  # nothing heard yet: start small
        burst = min(burst, config.min_burst_s)
    return Effective(caps, conc, thr, burst, discovering)


def refill(eff: Effective, state: ModelState, now: float) -> dict[str, float]:
    """Bucket levels at ``now`` (absent = full), capped at the bucket's size."""
    levels: dict[str, float] = {}
    for kind, cap in eff.caps.items():
        size, old = eff.size(kind), state.levels.get(kind)
        if old is None or state.updated is None:
            levels[kind] = size
        else:
            levels[kind] = min(size, old + max(0, now - state.updated) * (cap / 60))
    return levels


def _store(state: ModelState, levels: dict[str, float], now: float) -> ModelState:
    return replace(state, levels={**state.levels, **levels}, updated=now)


def promote(config: LimiterConfig, priority: Priority, waited_s: float) -> Priority:
    """A request that waited max_wait_s or longer is served as HIGH: nothing starves."""
    return Priority.HIGH if waited_s >= config.max_wait_s else Priority(priority)


def measured_rpm(config: LimiterConfig, state: ModelState, now: float) -> float:
    """The model's recent rate of grants, per minute (see the module docstring)."""
    half = config.tenant_window_s / 2
    return decayed(state.rate, now, half) * LN2 / half * 60


def counted(config: LimiterConfig, state: ModelState, now: float) -> ModelState:
    """One more grant in the model's rate."""
    count = decayed(state.rate, now, config.tenant_window_s / 2) + 1
    return replace(state, rate=TenantUsage(count, now))


def throttle(config: LimiterConfig, model: str, state: ModelState, now: float,
             percent: float | None) -> tuple[float | None, ModelState]:
    """The twin of the throttle script: set (or, with None, lift) the operator's throttle.
    Returns the rpm base it takes its percent of when the model has no limits at all (kept
    from an earlier throttle, else measured now); raises NothingToThrottle when there is
    none."""
    if percent is None:
        return None, replace(state, throttle=None, throttle_base=None)
    limits = config.limits_for(model)
    if limits.max_concurrency or any(state.observed.get(k) or limits.rate(k) for k in KINDS):
        return None, replace(state, throttle=percent)  # the percent is of those limits
    base = state.throttle_base
    if base is None:
        base = measured_rpm(config, state, now)
        if base < MIN_BASE_RPM:
            raise NothingToThrottle(model, base)
    return base, replace(state, throttle=percent, throttle_base=base)


def starving(config: LimiterConfig, state: ModelState, now: float, tenant: str,
             wait: Wait) -> tuple[Wait, ModelState]:
    """A refusal, and the tenant recorded as starved if it is (farm.capacity.fairness)."""
    if wait.over_share:
        return wait, state
    return wait, replace(state, starved=starve(config, state.starved, state.usage, now, tenant,
                                               wait.wait_s))


def acquire(config: LimiterConfig, model: str, state: ModelState, now: float, *,
           input_tokens: int, output_tokens: int, priority: Priority, tenant: str,
           waited_s: float = 0.0, grant_id: str = "g") -> tuple[Grant | Wait, ModelState]:
    """The twin of the acquire script (farm.capacity.limiter): the answer and the new state."""
    idx = PRIORITY_ORDER.index(promote(config, priority, waited_s))
    grant = Grant(model, grant_id, tenant, input_tokens, output_tokens)
    if state.paused_until is not None and state.paused_until > now:
        return Wait(state.paused_until - now, "paused (429)"), state
    eff = effective(config, model, state, now)
    if eff.unlimited:  # nothing is charged, so there is nothing to release
        return replace(grant, grant_id=""), counted(config, state, now)
    # active tenants: those that asked within the window, the asker included
    active = {t: s for t, s in state.active.items() if s > now - config.tenant_window_s}
    active[tenant] = now
    state = replace(state, active=active)
    used = decayed(state.usage.get(tenant), now, config.tenant_window_s / 2)
    over = over_share(config, state.starved, state.usage, now, tenant)
    if over:
        idx = min(idx + 1, 2)
    prio = PRIORITY_ORDER[idx]
    inflight = {g: v for g, v in state.inflight.items() if v[1] > now}
    state = replace(state, inflight=inflight)
    if eff.concurrency is not None:
        mine = sum(1 for t, _ in inflight.values() if t == tenant)
        if len(active) > 1 and mine >= math.ceil(eff.concurrency / len(active)):
            return starving(config, state, now, tenant, Wait(
                config.slot_wait_s, "tenant-concurrency", over_share=over))
        slots = max(1, math.floor(eff.concurrency * config.concurrency_share[prio] + EPS))
        if len(inflight) >= slots:
            return starving(config, state, now, tenant,
                            Wait(config.slot_wait_s, DISCOVERY if eff.discovering
                                 else "concurrency", over_share=over))
    levels = refill(eff, state, now)
    costs = {"rpm": 1, "itpm": input_tokens, "otpm": output_tokens}
    share = OVER_SHARE_RESERVE if over else config.reserve[prio]
    wait, reason, delay = 0.0, "", 0.0
    for kind, cap in eff.caps.items():
        rate, size = cap / 60, eff.size(kind)
        ahead = config.max_delay_s * rate
        cost = min(costs[kind], size)  # a request larger than the bucket: when it is full
        need = min(cost - ahead + share * (size + ahead), size)
        if levels[kind] < need and (need - levels[kind]) / rate > wait:
            wait, reason = (need - levels[kind]) / rate, kind
        delay = max(delay, (cost - levels[kind]) / rate)
    if reason:
        return starving(config, state, now, tenant, Wait(wait, reason, over_share=over))
    for kind, cap in eff.caps.items():
        levels[kind] = max(-cap, levels[kind] - costs[kind])
    usage = {**state.usage, tenant: TenantUsage(used + 1, now)}
    inflight[grant_id] = (tenant, now + config.grant_ttl_s)
    grant = replace(grant, delay_s=delay)
    starved = None if state.starved and state.starved.tenant == tenant else state.starved
    state = counted(config, replace(_store(state, levels, now), usage=usage, inflight=inflight,
                                    starved=starved), now)
    return grant, state


def settle(config: LimiterConfig, state: ModelState, now: float, grant: Grant, *,
           input_tokens: int | None = None, output_tokens: int | None = None
           ) -> tuple[bool, ModelState]:
    """The twin of release: free the slot; refund (or charge) actual usage vs reservation.

    Only a grant still on record counts: a second release, or one of a grant given while the
    model was unlimited, changes nothing. Levels stay within [-capacity, capacity].
    """
    if grant.grant_id not in state.inflight:
        return False, state
    inflight = {g: v for g, v in state.inflight.items() if g != grant.grant_id}
    state = replace(state, inflight=inflight)
    if input_tokens is None and output_tokens is None:
        return True, state
    eff = effective(config, grant.model, state, now)
    if not eff.caps:
        return True, state
    levels = refill(eff, state, now)
    for kind, reserved, actual in (("itpm", grant.input_tokens, input_tokens),
                                   ("otpm", grant.output_tokens, output_tokens)):
        if actual is not None and kind in levels:
            cap = eff.caps[kind]
            levels[kind] = max(-cap, min(eff.size(kind), levels[kind] + (reserved - actual)))
    return True, _store(state, levels, now)


def observe(config: LimiterConfig, model: str, state: ModelState, now: float,
            seen: Observation) -> ModelState:
    """The twin of the observe script: the model has been answered; follow the provider's
    limits; a burst it allows below ours becomes ours (farm.capacity.pacing); lower (never
    raise) a level to remaining * target when the provider has fewer left than we think."""
    state = replace(state, observed={**state.observed, **seen.limits}, answered=True,
                    burst=lowered(config, state.burst, now, seen.burst_s))
    eff = effective(config, model, state, now)
    kinds = [k for k in seen.remaining if k in eff.caps]
    if not kinds:
        return state
    levels = refill(eff, state, now)
    for kind in kinds:
        levels[kind] = min(levels[kind], seen.remaining[kind] * config.target)
    return _store(state, levels, now)


def pause(config: LimiterConfig, state: ModelState, now: float, seconds: float) -> ModelState:
    """The twin of pause (after a 429): paused-until only ever moves later; a 429 that finds
    the model not paused halves its burst (farm.capacity.pacing), the 429s of calls already
    on their way when the first came back do not."""
    if state.paused_until is None or state.paused_until <= now:
        state = replace(state, burst=halved(config, state.burst, now))
    until = now + seconds
    if state.paused_until is None or state.paused_until < until:
        return replace(state, paused_until=until)
    return state


def describe(config: LimiterConfig, model: str, state: ModelState, now: float
             ) -> dict[str, Any]:
    """What `farm limits` shows for one model (nothing is changed)."""
    eff, limits = effective(config, model, state, now), config.limits_for(model)
    live = [t for t, exp in state.inflight.values() if exp > now]
    half = config.tenant_window_s / 2
    tenants = sorted(t for t, s in state.active.items() if s > now - config.tenant_window_s)
    return {
        "model": model,
        "configured": limits.model_dump(),
        "observed": dict(state.observed),
        "effective": {**{k: eff.caps.get(k) for k in KINDS}, "max_concurrency": eff.concurrency},
        "bucket": {k: eff.size(k) for k in eff.caps},
        "burst_s": eff.burst_s,
        # the limits are not known yet: discovery_slots calls until the first answer
        "discovering": eff.discovering,
        "levels": refill(eff, state, now),
        "in_flight": len(live),
        "paused_for_s": max(0.0, (state.paused_until or now) - now),
        "throttle_percent": state.throttle,
        "throttle_base_rpm": state.throttle_base if state.throttle is not None else None,
        "rate_rpm": round(measured_rpm(config, state, now), 3),
        "active_tenants": {
            t: {"usage": round(decayed(state.usage.get(t), now, half), 3),
                "in_flight": live.count(t)} for t in tenants},
    }
