"""Admission: before a job's provider call, the cluster-wide limits (a ``Limiter``) and the
model's circuit breaker (a ``Breaker``) decide when the call goes, and on which model.

- Go: call now (after sleeping the grant's scheduled delay), on the job's model or, while
  that model's breaker is open and the job allows it, on its queue's fallback model.
- Later: the job must wait longer than a worker slot should be held; the task puts it back
  in the queue with a countdown, without using an attempt.
- Stop: the job must not call at all: one more call could cross its cost cap, or a hard
  budget that fails its jobs is spent; the task fails it into the dead-letter queue.

Money (farm.costs): before the limits, the job's cost cap is checked against what it has
spent plus this call's worst case; the budgets covering the call and the cost breakers
watching it (the ``Ledger``) are checked and reserved inside the limiter's acquire, and
settled with the call's cost when it is known.

Short waits for capacity are slept in the slot (with jitter, so waiters do not wake
together); a breaker that is open is never slept on (during a storm the slots are better
used by the jobs that can fall back). The Redis round trips per job: one for the breaker's
check and the limiter's acquire together, one for the release and the breaker's record
together (a ``Pair``: farm.capacity.combined).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm.capacity.circuit import Admission, counts_as_failure
from farm.capacity.limits import DISCOVERY, Grant, Wait
from farm.capacity.ports import Breaker, Ledger, Limiter, Pair, Separate
from farm.costs.budgets import BUDGET_EXCEEDED, Mode, Seed
from farm.costs.caching import CacheSetting, resolve_ttl
from farm.costs.estimate import DEFAULT_MAX_COST_USD, CapCheck, cost_cap, worst_case
from farm.costs.ledger import Charge, OverBudget, budget_reason
from farm.costs.pricing import PriceBook
from farm.jobs import Usage
from farm.provider.errors import ErrorKind
from farm.reliability.hold import Polled
from farm.store.jobs import StartedJob, limited, paused

log = logging.getLogger("farm.admission")


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
    # the cost caps: the farm's default, per tenant, per queue (farm.costs.estimate.cost_cap)
    max_cost_usd: Decimal = Field(default=DEFAULT_MAX_COST_USD, gt=0)
    tenant_max_cost_usd: dict[str, Decimal] = Field(default_factory=dict)
    queue_max_cost_usd: dict[str, Decimal] = Field(default_factory=dict)
    # prompt caching (farm.costs.prompt_cache): the farm's TTL and the queues' own, for
    # the cache writes a call's worst case includes
    prompt_cache: CacheSetting = "5m"
    queue_prompt_cache: dict[str, CacheSetting] = Field(default_factory=dict)
    # while the limiter's store (Redis) is unreachable, a job waits in its slot this long
    # for it to come back before its task fails (its lease then brings it back)
    outage_patience_s: float = Field(default=30.0, ge=0)


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


@dataclass(frozen=True)
class Stop:
    reason: str
    error_class: str  # COST_CAP or budgets.BUDGET_EXCEEDED


COST_CAP = "cost_cap"  # the error class of a job stopped before crossing its cost cap
# waits that are never slept in a slot: the slots serve jobs that can go meanwhile
_DEFER_AT_ONCE = ("circuit", "cost breaker")


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
    """One per worker process; thread-safe (the limiter and breaker are Redis scripts). The
    breaker and the limiter are asked through ``pair`` (by default their separate calls)."""

    def __init__(self, limiter: Limiter, breaker: Breaker, config: AdmissionConfig, *,
                 ledger: Ledger | None = None, prices: PriceBook | None = None,
                 pair: Pair | None = None, sleep: Callable[[float], Any] = time.sleep,
                 rand: Callable[[], float] = random.random,
                 transient: Callable[[Exception], bool] = lambda exc: False) -> None:
        self.limiter, self.breaker, self.config = limiter, breaker, config
        self.pair = pair or Separate(limiter, breaker)
        self._transient = transient  # an error of the shared store that may soon pass
        self.ledger, self.prices = ledger, prices
        self._sleep, self._rand = sleep, rand
        self._lock = threading.Lock()
        self._observed: dict[str, float] = {}
        # queues paused by an operator, read from Redis at most once a second
        self._paused = Polled(limiter.paused_queues, set[str](), 1.0)

    def admit(self, job: StartedJob) -> Go | Later | Stop:
        """Go (with a grant), Later (a wait, no attempt used) or Stop (no call may go). A
        transient error of the limiter's store (Redis restarting) is waited out for up to
        outage_patience_s: nothing was granted or reserved by the step that raised."""
        waited = 0.0
        while True:
            try:
                return self._admit(job)
            except Exception as exc:
                if not self._transient(exc) or waited >= self.config.outage_patience_s:
                    raise
                nap = min(1.0, self.config.outage_patience_s - waited)
                log.warning("job %s: capacity cannot be checked (%s); trying again in %.1fs",
                            job.id, type(exc).__name__, nap)
                self._sleep(nap)
                waited += nap

    def _admit(self, job: StartedJob) -> Go | Later | Stop:
        config = self.config
        # the common answer (not paused) from the cache; "paused" is confirmed in Redis
        if job.queue in self._paused.get() and job.queue in self._paused.fresh():
            return Later(config.paused_recheck_s, paused(job.queue))
        models = candidates(job, config)
        slept = 0.0
        while True:
            wait: Later | None = None
            give_back = False  # the tenant is over its fair share: do not wait in the slot
            for i, model in enumerate(models):
                # the charge is worked out first, so that one round trip asks the breaker
                # and the limiter; a Stop asks the breaker alone: an open circuit still wins
                charge = self._charge(job, model)
                if isinstance(charge, Stop):
                    decision, answer = self.breaker.allow(model), None
                else:
                    decision, answer = self.pair.admit(model, **self._ask(job), charge=charge)
                if decision.admission is Admission.REJECT:
                    if wait is None or decision.retry_in_s < wait.wait_s:
                        wait = Later(max(1.0, decision.retry_in_s),
                                     f"circuit of {model} is open")
                    continue
                if isinstance(charge, Stop):
                    return charge
                assert answer is not None
                got = self._acquire(job, model, charge, answer)
                if isinstance(got, Grant):
                    if got.delay_s > 0:
                        self._sleep(got.delay_s)
                    return Go(model, got, decision.admission is Admission.PROBE, i > 0)
                if isinstance(got, (Stop, Later)):
                    if isinstance(got, Stop):
                        return got
                    wait = got
                    break
                if got.opened:
                    log.critical("ALERT: %s: no call goes out until the spend rate falls "
                                 "back", got.reason)
                wait = Later(got.wait_s, got.reason if got.reason.startswith("cost breaker")
                             else limited(model, got.reason, got.over_share))
                give_back = got.over_share
                break  # capacity, not health: the fallback is for open circuits only
            assert wait is not None
            if (give_back or wait.reason.startswith(_DEFER_AT_ONCE)
                    or slept + wait.wait_s > config.sleep_max_s):
                jitter = 1.0 + 0.2 * self._rand()
                return Later(min(wait.wait_s * jitter, config.defer_max_s), wait.reason)
            nap = wait.wait_s * (1.0 + 0.5 * self._rand())
            self._sleep(nap)
            slept += nap

    def _charge(self, job: StartedJob, model: str) -> Charge | Stop | None:
        """The cost cap, then what the call counts against in the budgets and breakers."""
        if self.prices is None:
            return None
        price = self.prices.price(model)
        ttl = resolve_ttl(job.request.cache, self.config.queue_prompt_cache.get(job.queue),
                          self.config.prompt_cache)
        worst = None if price is None else worst_case(price, job.request, ttl)
        if worst is not None:
            c = self.config
            check = CapCheck(cost_cap(job.request, job.queue, default=c.max_cost_usd,
                                      tenants=c.tenant_max_cost_usd,
                                      queues=c.queue_max_cost_usd), job.spent, worst)
            if not check.fits:
                return Stop(f"stopped before crossing its cost cap: {check.explain()}",
                            COST_CAP)
        if self.ledger is None:
            return None
        charge = self.ledger.charge(job.request.tenant, job.queue, model,
                                    None if worst is None else worst.usd)
        hard = [] if charge is None else [c.budget.id for c in charge.covered
                                          if c.budget.mode is Mode.HARD]
        if worst is None and hard:
            return Stop(f"{model} has no price row: hard budget(s) {', '.join(hard)} cannot "
                        "be kept for its calls", BUDGET_EXCEEDED)
        return charge

    @staticmethod
    def _ask(job: StartedJob) -> dict[str, Any]:
        """The limiter's acquire arguments for the job's call, but its charge."""
        return {"input_tokens": job.request.approx_input_tokens(),
                "output_tokens": job.request.max_tokens, "priority": job.request.priority,
                "tenant": job.request.tenant, "waited_s": waited_s(job)}

    def _acquire(self, job: StartedJob, model: str, charge: Charge | None,
                 got: Grant | Wait | Seed | OverBudget) -> Grant | Wait | Later | Stop:
        """The limiter's answer ``got`` followed up: a budget period with no count in Redis
        is seeded from Postgres (once per period, or after Redis lost its data) and the
        limiter asked again, alone: the breaker has admitted the call already (asking it
        again could take a second probe lease of a half-open circuit)."""
        retold = False
        for attempt in range(4):
            if attempt:
                got = self.limiter.acquire(model, **self._ask(job), charge=charge)
            if isinstance(got, OverBudget):
                if got.fail:
                    return Stop(got.explain(), BUDGET_EXCEEDED)
                return Later(got.wait_s, got.explain())
            if (isinstance(got, Wait) and got.reason == DISCOVERY and not retold
                    and self._heard(model)):
                # this process has had answers from the model, Redis does not know it (it
                # lost its last writes): tell it again rather than wait for a lost grant
                retold = True
                self._safely(self.limiter.observe, model, {})
                continue
            if not isinstance(got, Seed):
                return got
            assert charge is not None and self.ledger is not None
            try:
                self.ledger.seed(charge, got.index)
            except Exception as exc:  # Postgres down: the spend cannot be known, so wait
                budget = charge.covered[got.index].budget.id
                log.warning("budget %s: its spend could not be read from Postgres (%s)",
                            budget, type(exc).__name__)
                return Later(self.config.paused_recheck_s, f"{budget_reason(budget)} its "
                             "spend could not be read from Postgres")
        return Later(1.0, "budgets: their spend is being rebuilt")

    def done(self, go: Go, usage: Usage, ratelimit: dict[str, str],
             cost: Decimal | None = None) -> None:
        """A call that the provider answered with 200, and its cost (None: unknown). Never
        raises: the result must be recorded whatever Redis does. Cache reads do not count
        toward the input limit."""
        self._settle(go, usage.input_tokens + usage.cache_creation_input_tokens,
                     usage.output_tokens, cost, success=True)
        self._observe(go.model, ratelimit, answered=True)

    def failed(self, go: Go, kind: ErrorKind, *, retry_after_s: float | None,
               ratelimit: dict[str, str], cost: Decimal | None = Decimal(0)) -> None:
        """A call that failed: refund its tokens (and its budget reservation, but for what
        it cost: None, unknown, spends its whole worst case); a 429 pauses the model for
        every worker; overload, 5xx and timeouts count against the breaker. Never raises."""
        success: bool | None = None  # None: not the breaker's business
        if counts_as_failure(kind):
            success = False
        elif go.probe and kind is not ErrorKind.RATE_LIMITED:
            success = True  # the service answered (a 4xx about this request): it is up
        self._settle(go, 0, 0, cost, success=success)
        if kind is ErrorKind.RATE_LIMITED:
            self._safely(self.limiter.pause, go.model, retry_after_s or 1.0)
            log.warning("429 from %s: every worker pauses it for %.1fs", go.model,
                        retry_after_s or 1.0)
        self._observe(go.model, ratelimit)

    @staticmethod
    def _safely(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # Redis trouble must not cost a recorded result
            log.warning("%s failed: %s", getattr(fn, "__name__", "call"), type(exc).__name__)

    def _settle(self, go: Go, input_tokens: int, output_tokens: int, cost: Decimal | None,
                *, success: bool | None) -> None:
        """Release the grant and tell the breaker the call's outcome (None: nothing to tell),
        in one step; then settle the budgets' reservation."""
        # a grant not released frees its slot itself after grant_ttl_s; a reservation not
        # settled comes back after the ledger's reservation_ttl_s
        self._safely(self.pair.finish, go.model, go.grant, input_tokens=input_tokens,
                     output_tokens=output_tokens, success=success, probe=go.probe)
        if go.grant.charge is not None and self.ledger is not None:
            self._safely(self.ledger.settle, go.grant.charge, cost)

    def _heard(self, model: str) -> bool:
        with self._lock:
            return model in self._observed

    def _observe(self, model: str, ratelimit: dict[str, str], answered: bool = False) -> None:
        """Follow the provider's rate-limit headers, at most once a second per model. An
        answer without them is told too, at most once a minute: it ends the model's
        discovery (farm.capacity.limits), also after Redis lost that it had ended."""
        if not (ratelimit or answered):
            return
        now = time.monotonic()
        with self._lock:
            last = self._observed.get(model)
            if last is not None and now - last < (1.0 if ratelimit else 60.0):
                return
            self._observed[model] = now
        self._safely(self.limiter.observe, model, ratelimit)
