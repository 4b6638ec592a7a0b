"""The circuit breaker's arithmetic, pure: one model's breaker as a frozen value and the
transition an event makes (no I/O, no clock of its own).

When a model is overloaded (529s, 5xx, timeouts), each worker retrying on its own keeps
hammering it and burns attempts. The breaker opens for everyone after enough failures, lets
exactly ``probes`` calls through once the cooldown is over, and closes again when a probe
succeeds (a failed probe re-opens it with the cooldown doubled). ``transition`` is the whole
rule; ``farm.capacity.breaker`` repeats it as a Redis script and
``farm.capacity.memory`` runs it in memory, and the integration tests check the script
against this twin step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.provider.errors import ErrorKind

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
class BreakerDecision:
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
) -> tuple[BreakerValue, BreakerDecision | None]:
    """The next value, and for ALLOW the decision. ``probe``: a SUCCESS/FAILURE is the result
    of a call admitted as PROBE. Results arriving while OPEN, and non-probe results while
    HALF_OPEN, were admitted before the breaker opened: they say nothing about now."""
    if event is Event.ALLOW:
        return _allow(value, now, config)
    return _record(value, event is Event.SUCCESS, probe, now, config), None


def _allow(v: BreakerValue, now: float, c: BreakerConfig) -> tuple[BreakerValue, BreakerDecision]:
    if v.state is BreakerState.OPEN:
        wait = v.opened_at + cooldown_s(v, c) - now
        if wait > 0:
            return v, BreakerDecision(Admission.REJECT, wait, BreakerState.OPEN)
        v = replace(v, state=BreakerState.HALF_OPEN, probe_leases=())
    if v.state is BreakerState.HALF_OPEN:
        leases = tuple(sorted(e for e in v.probe_leases if e > now))
        if len(leases) < c.probes:
            v = replace(v, probe_leases=tuple(sorted((*leases, now + c.probe_ttl_s))))
            return v, BreakerDecision(Admission.PROBE, 0.0, BreakerState.HALF_OPEN)
        wait = min(leases[0] - now, c.cooldown_s)
        return replace(v, probe_leases=leases), BreakerDecision(
            Admission.REJECT, wait, BreakerState.HALF_OPEN)
    return v, BreakerDecision(Admission.ALLOW, 0.0, BreakerState.CLOSED)


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
