"""Admission: before a job's provider call, the cluster-wide limits (a ``Limiter``) and the
model's circuit breaker (a ``Breaker``) decide when the call goes, and on which model.

- Go: call now (after sleeping the grant's scheduled delay), on the job's model or, while
  that model's breaker is open and the job allows it, on its queue's fallback model.
- Later: the job must wait longer than a worker slot should be held; the task puts it back
  in the queue with a countdown, without using an attempt.

Short waits for capacity are slept in the slot (with jitter, so waiters do not wake
together); a breaker that is open is never slept on (during a storm the slots are better
used by the jobs that can fall back). The Redis round trips per job: one acquire, one
breaker check (a read while closed), one release and one breaker record.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from farm.capacity.circuit import Admission, BreakerDecision, BreakerState, counts_as_failure
from farm.capacity.limits import Grant, Wait
from farm.jobs import Priority, Usage
from farm.provider.errors import ErrorKind
from farm.reliability.hold import Polled
from farm.store.jobs import StartedJob, limited, paused

log = logging.getLogger("farm.admission")


class Limiter(Protocol):
    """The cluster-wide limits: ``farm.capacity.limiter.Limiter`` (Redis) or
    ``farm.capacity.memory.MemoryLimiter`` (one process)."""

    def acquire(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
                tenant: str, waited_s: float = 0.0) -> Grant | Wait: ...

    def release(self, grant: Grant, *, input_tokens: int | None = None,
                output_tokens: int | None = None) -> None: ...

    def pause(self, model: str, seconds: float) -> None: ...

    def observe(self, model: str, headers: Mapping[str, str]) -> None: ...

    def paused_queues(self) -> set[str]: ...


class Breaker(Protocol):
    """A circuit breaker per model: ``farm.capacity.breaker.Breaker`` (Redis) or
    ``farm.capacity.memory.MemoryBreaker`` (one process)."""

    def allow(self, model: str) -> BreakerDecision: ...

    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState: ...


class AdmissionConfig(BaseModel):
    """What the gate needs of the farm's settings (built by farm.capacity.build)."""

    model_config = ConfigDict(frozen=True)

    # queue -> the model that serves its fallback-enabled jobs while its own circuit is open
    fallbacks: dict[str, str] = Field(default_factory=dict)
    # a job of a paused queue is looked at again after this long
    paused_recheck_s: float = Field(default=30.0, gt=0)
    # waits for capacity up to this long are slept in the slot; longer ones are deferred
    sleep_max_s: float = Field(default=10.0, ge=0)
    # the longest countdown of a deferral
    defer_max_s: float = Field(default=60.0, gt=0)


@dataclass(frozen=True)
class Go:
    model: str
    grant: Grant
    probe: bool  # this call is the breaker's half-open probe
    fallback: bool  # the model is the queue's fallback, not the job's own


@dataclass(frozen=True)
class Later:
    wait_s: float
    reason: str


def candidates(job: StartedJob, config: AdmissionConfig) -> list[str]:
    """The models a job may run on, in order: its own, then its queue's fallback if the job
    allows falling back."""
    models = [job.model]
    fallback = config.fallbacks.get(job.queue)
    if job.request.allow_fallback and fallback and fallback != job.model:
        models.append(fallback)
    return models


def waited_s(job: StartedJob, now: datetime | None = None) -> float:
    if job.created_at is None:
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - job.created_at).total_seconds())


class Gate:
    """One per worker process; thread-safe (the limiter and breaker are Redis scripts)."""

    def __init__(self, limiter: Limiter, breaker: Breaker, config: AdmissionConfig, *,
                 sleep: Callable[[float], Any] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.limiter, self.breaker, self.config = limiter, breaker, config
        self._sleep, self._rand = sleep, rand
        self._lock = threading.Lock()
        self._observed: dict[str, float] = {}
        # queues paused by an operator, read from Redis at most once a second
        self._paused = Polled(limiter.paused_queues, set[str](), 1.0)

    def admit(self, job: StartedJob) -> Go | Later:
        config = self.config
        # the common answer (not paused) from the cache; "paused" is confirmed in Redis
        if job.queue in self._paused.get() and job.queue in self._paused.fresh():
            return Later(config.paused_recheck_s, paused(job.queue))
        models = candidates(job, config)
        slept = 0.0
        while True:
            wait: Later | None = None
            for i, model in enumerate(models):
                decision = self.breaker.allow(model)
                if decision.admission is Admission.REJECT:
                    if wait is None or decision.retry_in_s < wait.wait_s:
                        wait = Later(max(1.0, decision.retry_in_s),
                                     f"circuit of {model} is open")
                    continue
                got = self.limiter.acquire(
                    model, input_tokens=job.request.approx_input_tokens(),
                    output_tokens=job.request.max_tokens, priority=job.request.priority,
                    tenant=job.request.tenant, waited_s=waited_s(job))
                if isinstance(got, Grant):
                    if got.delay_s > 0:
                        self._sleep(got.delay_s)
                    return Go(model, got, decision.admission is Admission.PROBE, i > 0)
                wait = Later(got.wait_s, limited(model, got.reason))
                break  # capacity, not health: the fallback is for open circuits only
            assert wait is not None
            if wait.reason.startswith("circuit") or slept + wait.wait_s > config.sleep_max_s:
                jitter = 1.0 + 0.2 * self._rand()
                return Later(min(wait.wait_s * jitter, config.defer_max_s), wait.reason)
            nap = wait.wait_s * (1.0 + 0.5 * self._rand())
            self._sleep(nap)
            slept += nap

    def done(self, go: Go, usage: Usage, ratelimit: dict[str, str]) -> None:
        """A call that the provider answered with 200. Never raises: the result must be
        recorded whatever Redis does. Cache reads do not count toward the input limit."""
        self._settle(go, usage.input_tokens + usage.cache_creation_input_tokens,
                     usage.output_tokens)
        self._safely(self.breaker.record, go.model, success=True, probe=go.probe)
        self._observe(go.model, ratelimit)

    def failed(self, go: Go, kind: ErrorKind, *, retry_after_s: float | None,
               ratelimit: dict[str, str]) -> None:
        """A call that failed: refund its tokens; a 429 pauses the model for every worker;
        overload, 5xx and timeouts count against the breaker. Never raises."""
        self._settle(go, 0, 0)
        if kind is ErrorKind.RATE_LIMITED:
            self._safely(self.limiter.pause, go.model, retry_after_s or 1.0)
            log.warning("429 from %s: every worker pauses it for %.1fs", go.model,
                        retry_after_s or 1.0)
        if counts_as_failure(kind):
            self._safely(self.breaker.record, go.model, success=False, probe=go.probe)
        elif go.probe and kind is not ErrorKind.RATE_LIMITED:
            # the service answered (a 4xx about this request): it is up
            self._safely(self.breaker.record, go.model, success=True, probe=True)
        self._observe(go.model, ratelimit)

    @staticmethod
    def _safely(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # Redis trouble must not cost a recorded result
            log.warning("%s failed: %s", getattr(fn, "__name__", "call"), type(exc).__name__)

    def _settle(self, go: Go, input_tokens: int, output_tokens: int) -> None:
        # a grant not released frees its slot itself after grant_ttl_s
        self._safely(self.limiter.release, go.grant, input_tokens=input_tokens,
                     output_tokens=output_tokens)

    def _observe(self, model: str, ratelimit: dict[str, str]) -> None:
        """Follow the provider's rate-limit headers, at most once a second per model."""
        if not ratelimit:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._observed.get(model, 0.0) < 1.0:
                return
            self._observed[model] = now
        self._safely(self.limiter.observe, model, ratelimit)
