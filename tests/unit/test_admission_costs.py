"""The gate's money paths (farm.capacity.admission): the cost cap before every call, and
what it does with the ledger's answers (seed, over budget, cost breaker). The limiter is a
scripted stand-in here; the real script's answers are checked in test_ledger.py."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from farm.capacity.admission import COST_CAP, AdmissionConfig, Gate, Go, Later, Stop
from farm.capacity.circuit import BreakerConfig
from farm.capacity.limits import Grant, Wait
from farm.capacity.memory import ManualClock, MemoryBreaker
from farm.costs import budgets as b
from farm.costs.ledger import Charge, Covered, OverBudget
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, Priority
from farm.store.jobs import StartedJob

SONNET, UNPRICED = "claude-sonnet-5-5", "claude-unpriced-1"


class Scripted:
    """A limiter that answers acquire from a script and records the charges it was given."""

    def __init__(self, *answers: Any) -> None:
        self.answers, self.charges = list(answers), list[Charge | None]()

    def acquire(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
                tenant: str, waited_s: float = 0.0, charge: Charge | None = None) -> Any:
        self.charges.append(charge)
        return self.answers.pop(0)

    def release(self, grant: Grant, **kw: Any) -> None: ...

    def pause(self, model: str, seconds: float) -> None: ...

    def observe(self, model: str, headers: Mapping[str, str]) -> None: ...

    def paused_queues(self) -> set[str]:
        return set()


class FakeLedger:
    def __init__(self, *budgets: b.Budget) -> None:
        self.budgets, self.seeded, self.settled = budgets, list[int](), list[Any]()

    def charge(self, tenant: str, queue: str, model: str, cost: Decimal | None) -> Charge | None:
        covered = tuple(Covered(x, b.window(x.period, datetime.now(UTC)))
                        for x in b.covering(self.budgets, tenant, queue, model))
        return Charge(0 if cost is None else int(cost * 10**9), "g|1", covered, ()) \
            if covered else None

    def seed(self, charge: Charge, index: int) -> None:
        self.seeded.append(index)

    def settle(self, charge: Charge, actual: Decimal | None) -> None:
        self.settled.append((charge, actual))


def gate(limiter: Scripted, ledger: FakeLedger | None = None, **config: Any) -> Gate:
    clock = ManualClock()
    return Gate(limiter, MemoryBreaker(BreakerConfig(), clock=clock),  # type: ignore[arg-type]
                AdmissionConfig(**config), ledger=ledger, prices=default_pricebook(),
                sleep=clock.sleep, rand=lambda: 0.0)


def job(model: str = SONNET, spent: str = "0", **fields: Any) -> StartedJob:
    request = JobRequest(prompt="Analyze this", tenant="t", **fields)
    return StartedJob(uuid.uuid4(), request, "q", model, 2, datetime.now(UTC), Decimal(spent))


GRANT = Grant(SONNET, "g", "t", 10, 10)
TENANT_DAY = b.Budget(scope=b.Scope.TENANT, name="t", period=b.Period.DAY,
                      limit_usd=Decimal(1))


def test_a_call_that_could_cross_the_jobs_cap_is_stopped_before_it_goes() -> None:
    limiter = Scripted(GRANT)
    # a $0.01028 worst case (19 input tokens at $2/M, 1,024 output at $10/M): it fits $2
    # after $1.98 spent, not after $1.99
    assert isinstance(gate(limiter).admit(job(spent="1.98")), Go)
    stopped = gate(Scripted()).admit(job(spent="1.99"))
    assert isinstance(stopped, Stop) and stopped.error_class == COST_CAP
    assert "on top of $1.990 already spent exceeds the job's cost cap $2.00" in stopped.reason
    capped = gate(Scripted(), tenant_max_cost_usd={"t": Decimal("0.01")}).admit(job())
    assert isinstance(capped, Stop) and "cost cap $0.0100" in capped.reason


def test_the_charge_carries_the_worst_case_and_a_seed_is_asked_for_then_acquired_again() -> None:
    ledger = FakeLedger(TENANT_DAY)
    limiter = Scripted(b.Seed(0), GRANT)
    got = gate(limiter, ledger).admit(job())
    assert isinstance(got, Go) and ledger.seeded == [0]
    charge = limiter.charges[0]
    assert charge is not None and charge.cost == 10_278_000  # 19 in at $2, 1,024 out at $10
    assert limiter.charges == [charge, charge]


def test_a_spent_budget_makes_the_job_wait_or_stops_it() -> None:
    over = OverBudget("tenant:t:day", 3600.0, False, Decimal(1), Decimal(1), Decimal("0.01"))
    waited = gate(Scripted(over), FakeLedger(TENANT_DAY), defer_max_s=60).admit(job())
    assert isinstance(waited, Later) and waited.wait_s == 60.0  # looked at again each minute
    assert waited.reason.startswith("budget tenant:t:day: spent $1.000 of $1.00")
    failing = OverBudget("tenant:t:day", 3600.0, True, Decimal(1), Decimal(1), Decimal("0.01"))
    stopped = gate(Scripted(failing), FakeLedger(TENANT_DAY)).admit(job())
    assert isinstance(stopped, Stop) and stopped.error_class == b.BUDGET_EXCEEDED


def test_an_open_cost_breaker_defers_at_once_and_is_never_slept_on() -> None:
    wait = Wait(10.0, "cost breaker all open", opened=True)
    got = gate(Scripted(wait), FakeLedger(TENANT_DAY), sleep_max_s=30).admit(job())
    assert got == Later(10.0, "cost breaker all open")


def test_in_flight_reservations_are_waited_out_in_the_slot() -> None:
    busy = Wait(1.0, "budget tenant:t:day: in-flight reservations")
    got = gate(Scripted(busy, GRANT), FakeLedger(TENANT_DAY)).admit(job())
    assert isinstance(got, Go)


def test_an_unpriced_model_under_a_hard_budget_is_stopped_and_without_one_it_runs() -> None:
    unpriced = job(model=UNPRICED)
    stopped = gate(Scripted(), FakeLedger(TENANT_DAY)).admit(unpriced)
    assert isinstance(stopped, Stop) and "no price row" in stopped.reason
    assert isinstance(gate(Scripted(GRANT), FakeLedger()).admit(unpriced), Go)


@pytest.mark.parametrize(("cost", "settled"), [(Decimal("0.002"), Decimal("0.002")),
                                               (None, None)])
def test_a_call_settles_its_charge_with_its_cost(cost: Decimal | None,
                                                 settled: Decimal | None) -> None:
    ledger = FakeLedger(TENANT_DAY)
    limiter = Scripted(GRANT)
    g = gate(limiter, ledger)
    go = g.admit(job())
    assert isinstance(go, Go)
    charge = limiter.charges[0]
    go = Go(go.model, Grant(SONNET, "g", "t", 10, 10, charge=charge), go.probe, go.fallback)
    from farm.jobs import Usage
    from farm.provider.errors import ErrorKind
    if cost is None:
        g.failed(go, ErrorKind.ABANDONED, retry_after_s=None, ratelimit={}, cost=None)
    else:
        g.done(go, Usage(input_tokens=1, output_tokens=1), {}, cost)
    assert ledger.settled == [(charge, settled)]


@pytest.mark.parametrize(("own", "queue", "farm", "write_price"), [
    (None, None, "5m", "2.50"), (None, {"q": "1h"}, "5m", "4.00"),
    ("5m", {"q": "1h"}, "1h", "2.50"), (None, {"q": "off"}, "1h", None), ("off", None, "5m", None),
])
def test_the_charge_reserves_the_cache_writes_of_the_calls_ttl(
        own: str | None, queue: dict[str, str] | None, farm: str, write_price: str | None) -> None:
    ledger, limiter = FakeLedger(TENANT_DAY), Scripted(GRANT)
    long_system = "s" * 4 * 5000  # over claude-sonnet-5-5's 4,096: the prefix is planned
    got = gate(limiter, ledger, prompt_cache=farm, queue_prompt_cache=queue or {}).admit(
        job(system=long_system, cache=own))
    assert isinstance(got, Go)
    charge = limiter.charges[0]
    tokens_in, cached = -(-(4 * 5000 + len("Analyze this")) // 4) + 16, 3 + 5000
    per_write = Decimal(write_price or "2.00")
    expected = (Decimal(2) * (tokens_in - cached) + per_write * cached
                + Decimal(10) * 1024) / 1_000_000
    assert charge is not None and charge.cost == int(expected * 10**9)
