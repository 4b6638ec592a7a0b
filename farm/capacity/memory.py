"""In-memory backends: the limiter and the circuit breaker of one process, behind the same
interface as the Redis ones (``farm.capacity.ports.Limiter`` / ``Breaker``).

They run the pure twins (``farm.capacity.limits``, ``farm.capacity.circuit``) on state kept
in a dict, with the clock injected: the unit tests drive admission with them (the clock is
advanced by the gate's own sleeps), and a single-process tool can use them without Redis.
They are not shared between processes, so they do not keep a cluster inside its limits.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from farm.capacity import limits
from farm.capacity.circuit import (
    Admission,
    BreakerConfig,
    BreakerDecision,
    BreakerState,
    BreakerValue,
    Event,
    report,
    transition,
)
from farm.capacity.config import LimiterConfig
from farm.capacity.headers import parse_headers
from farm.capacity.limits import Grant, ModelState, Wait
from farm.costs.budgets import Seed
from farm.costs.ledger import Charge, OverBudget
from farm.jobs import Priority

Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told: ``sleep`` advances it (give it to the gate)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds``. A positive sleep always moves the clock, as a real one does,
        even by less than the float resolution of ``now``: a waiter whose wait rounds to
        almost nothing (a bucket short by 1e-11 s of refill) must not loop on it forever."""
        if seconds > 0:
            self.now = max(self.now + seconds, math.nextafter(self.now, math.inf))


class MemoryLimiter:
    """``farm.capacity.limiter.Limiter`` for one process: the same answers, no Redis."""

    def __init__(self, config: LimiterConfig, *, clock: Clock = time.time,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.config, self._clock, self._new_id = config, clock, new_id
        self._states: dict[str, ModelState] = {}
        self._seen: set[str] = set()  # models observed, paused or throttled (Redis: P:models)
        self._paused_queues: set[str] = set()
        self._lock = threading.Lock()

    def _update(self, model: str, step: Callable[[ModelState, float], tuple[Any, ModelState]],
                *, seen: bool = False) -> Any:
        with self._lock:
            answer, self._states[model] = step(self._states.get(model, ModelState()),
                                               self._clock())
            if seen:
                self._seen.add(model)
            return answer

    def acquire(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
                tenant: str, waited_s: float = 0.0, charge: Charge | None = None,
                ) -> Grant | Wait | Seed | OverBudget:
        if charge is not None:
            raise ValueError("budgets and the cost breaker are kept in Redis: "
                             "MemoryLimiter takes no charge")
        limits.check_request(input_tokens, output_tokens, tenant)
        gid = self._new_id()
        got: Grant | Wait = self._update(model, lambda state, now: limits.acquire(
            self.config, model, state, now, input_tokens=int(input_tokens),
            output_tokens=int(output_tokens), priority=Priority(priority), tenant=tenant,
            waited_s=waited_s, grant_id=gid))
        return got

    def release(self, grant: Grant, *, input_tokens: int | None = None,
                output_tokens: int | None = None) -> None:
        if not grant.grant_id:
            return
        actual_in = None if input_tokens is None else max(0, int(input_tokens))
        actual_out = None if output_tokens is None else max(0, int(output_tokens))
        self._update(grant.model, lambda state, now: limits.settle(
            self.config, state, now, grant, input_tokens=actual_in, output_tokens=actual_out))

    def pause(self, model: str, seconds: float) -> None:
        seconds = limits.check_pause(seconds)
        self._update(model, lambda state, now: (
            None, limits.pause(self.config, state, now, seconds)), seen=True)

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        self._update(model, lambda state, now: (None, limits.observe(
            self.config, model, state, now, parse_headers(headers, now))), seen=True)

    def throttle(self, model: str, percent: float | None) -> float | None:
        value = limits.check_percent(percent)
        base: float | None = self._update(model, lambda state, now: limits.throttle(
            self.config, model, state, now, value), seen=True)
        return base

    def pause_queue(self, queue: str) -> None:
        with self._lock:
            self._paused_queues.add(queue)

    def resume_queue(self, queue: str) -> None:
        with self._lock:
            self._paused_queues.discard(queue)

    def paused_queues(self) -> set[str]:
        with self._lock:
            return set(self._paused_queues)

    def models(self) -> list[str]:
        """Configured models and those observed, paused or throttled (as the Redis one)."""
        with self._lock:
            return sorted(self._seen | set(self.config.models))

    def read_state(self, model: str, tenants: Iterable[str] = ()) -> tuple[ModelState, float]:
        with self._lock:
            return self._states.get(model, ModelState()), self._clock()

    def snapshot(self, model: str) -> dict[str, Any]:
        state, now = self.read_state(model)
        return limits.describe(self.config, model, state, now)


class MemoryBreaker:
    """``farm.capacity.breaker.Breaker`` for one process: the same answers, no Redis."""

    def __init__(self, config: BreakerConfig, *, clock: Clock = time.time) -> None:
        self.config, self._clock = config, clock
        self._values: dict[str, BreakerValue] = {}
        self._lock = threading.Lock()

    def _step(self, model: str, event: Event, probe: bool = False
              ) -> tuple[BreakerValue, BreakerDecision | None]:
        with self._lock:
            value, decision = transition(self._values.get(model, BreakerValue()), event,
                                         self._clock(), self.config, probe=probe)
            self._values[model] = value
            return value, decision

    def allow(self, model: str) -> BreakerDecision:
        _, decision = self._step(model, Event.ALLOW)
        assert decision is not None
        return decision

    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState:
        value, _ = self._step(model, Event.SUCCESS if success else Event.FAILURE, probe)
        return value.state

    def value(self, model: str) -> tuple[BreakerValue, float]:
        with self._lock:
            return self._values.get(model, BreakerValue()), self._clock()

    def state(self, model: str) -> dict[str, Any]:
        return report(model, *self.value(model), self.config)

    def reset(self, model: str) -> None:
        with self._lock:
            self._values.pop(model, None)


__all__ = ["Admission", "ManualClock", "MemoryBreaker", "MemoryLimiter"]
