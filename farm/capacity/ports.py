"""What the admission gate (farm.capacity.admission) works with, as protocols: the limiter,
the breaker, the ledger, and the breaker and limiter asked together (a ``Pair``). The Redis
implementations are farm.capacity.limiter, .breaker, .combined and farm.costs.ledger; the
in-memory twins are farm.capacity.memory; ``Separate`` pairs any limiter and breaker by
calling them one after the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Protocol

from farm.capacity.circuit import Admission, BreakerDecision, BreakerState
from farm.capacity.limits import Grant, Wait
from farm.costs.budgets import Seed
from farm.costs.ledger import Charge, OverBudget
from farm.jobs import Priority


class Limiter(Protocol):
    """The cluster-wide limits: ``farm.capacity.limiter.Limiter`` (Redis) or
    ``farm.capacity.memory.MemoryLimiter`` (one process)."""

    def acquire(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
                tenant: str, waited_s: float = 0.0, charge: Charge | None = None,
                ) -> Grant | Wait | Seed | OverBudget: ...

    def release(self, grant: Grant, *, input_tokens: int | None = None,
                output_tokens: int | None = None) -> None: ...

    def pause(self, model: str, seconds: float) -> None: ...

    def observe(self, model: str, headers: Mapping[str, str]) -> None: ...

    def paused_queues(self) -> set[str]: ...


class Ledger(Protocol):
    """Budgets and cost breakers: ``farm.costs.ledger.Ledger`` (Redis)."""

    def charge(self, tenant: str, queue: str, model: str,
               cost: Decimal | None) -> Charge | None: ...

    def seed(self, charge: Charge, index: int) -> None: ...

    def settle(self, charge: Charge, actual: Decimal | None) -> object: ...


class Breaker(Protocol):
    """A circuit breaker per model: ``farm.capacity.breaker.Breaker`` (Redis) or
    ``farm.capacity.memory.MemoryBreaker`` (one process)."""

    def allow(self, model: str) -> BreakerDecision: ...

    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState: ...


class Pair(Protocol):
    """The breaker and the limiter asked together: ``farm.capacity.combined.Paired`` (one
    Redis round trip per step) or ``Separate`` (their own calls, one after the other)."""

    def admit(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
              tenant: str, waited_s: float = 0.0, charge: Charge | None = None,
              ) -> tuple[BreakerDecision, Grant | Wait | Seed | OverBudget | None]: ...

    def finish(self, model: str, grant: Grant, *, input_tokens: int | None,
               output_tokens: int | None, success: bool | None, probe: bool) -> None: ...


class Separate:
    """A Pair of separate calls (the in-memory twins, test fakes), in the paired scripts'
    order: allow, then acquire unless the breaker rejects; release, then record."""

    def __init__(self, limiter: Limiter, breaker: Breaker) -> None:
        self.limiter, self.breaker = limiter, breaker

    def admit(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
              tenant: str, waited_s: float = 0.0, charge: Charge | None = None,
              ) -> tuple[BreakerDecision, Grant | Wait | Seed | OverBudget | None]:
        decision = self.breaker.allow(model)
        if decision.admission is Admission.REJECT:
            return decision, None
        return decision, self.limiter.acquire(
            model, input_tokens=input_tokens, output_tokens=output_tokens, priority=priority,
            tenant=tenant, waited_s=waited_s, charge=charge)

    def finish(self, model: str, grant: Grant, *, input_tokens: int | None,
               output_tokens: int | None, success: bool | None, probe: bool) -> None:
        try:
            self.limiter.release(grant, input_tokens=input_tokens, output_tokens=output_tokens)
        finally:  # a release that failed must not cost the breaker its record
            if success is not None:
                self.breaker.record(model, success=success, probe=probe)
