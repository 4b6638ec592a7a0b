"""The gate asks the breaker and the limiter through a Pair (farm.capacity.ports): one step to
admit, one to finish. What it must keep of the separate calls' order: an open circuit wins
over the cost cap, and the limiter's retries (a seed, a retold discovery) do not ask the
breaker again, which would take a second probe lease of a half-open circuit."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from farm.capacity.admission import COST_CAP, AdmissionConfig, Gate, Go, Later, Stop
from farm.capacity.circuit import BreakerConfig, BreakerDecision, BreakerState
from farm.capacity.limits import DISCOVERY, Grant, Wait
from farm.capacity.memory import ManualClock, MemoryBreaker
from farm.capacity.ports import Separate
from farm.costs import budgets as b
from farm.costs.ledger import Charge, Covered
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, Usage
from farm.provider.errors import ErrorKind
from farm.store.jobs import StartedJob

SONNET = "claude-sonnet-5-5"
GRANT = Grant(SONNET, "g", "t", 10, 10)
TENANT_DAY = b.Budget(scope=b.Scope.TENANT, name="t", period=b.Period.DAY,
                      limit_usd=Decimal(1))


class Scripted:
    """A limiter that answers acquire from a script and counts what it is asked."""

    def __init__(self, *answers: Any) -> None:
        self.answers, self.acquired, self.observed = list(answers), 0, 0

    def acquire(self, model: str, **ask: Any) -> Any:
        self.acquired += 1
        return self.answers.pop(0)

    def release(self, grant: Grant, **kw: Any) -> None: ...

    def pause(self, model: str, seconds: float) -> None: ...

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        self.observed += 1

    def paused_queues(self) -> set[str]:
        return set()


class Recording(Separate):
    """The separate calls, and what the gate asked of the pair."""

    admits: int = 0
    finished: list[tuple[bool | None, bool]]

    def admit(self, model: str, **ask: Any) -> tuple[BreakerDecision, Any]:
        self.admits += 1
        return super().admit(model, **ask)

    def finish(self, model: str, grant: Grant, *, input_tokens: int | None,
               output_tokens: int | None, success: bool | None, probe: bool) -> None:
        self.finished.append((success, probe))
        super().finish(model, grant, input_tokens=input_tokens, output_tokens=output_tokens,
                       success=success, probe=probe)


class OneDay:
    """A ledger with the tenant's daily budget; seeding succeeds."""

    def charge(self, tenant: str, queue: str, model: str, cost: Decimal | None) -> Charge:
        return Charge(1, "g|1", (Covered(TENANT_DAY, b.window(TENANT_DAY.period,
                                                             datetime.now(UTC))),), ())

    def seed(self, charge: Charge, index: int) -> None: ...

    def settle(self, charge: Charge, actual: Decimal | None) -> None: ...


def rig(limiter: Scripted, *, ledger: OneDay | None = None
        ) -> tuple[Gate, MemoryBreaker, Recording, ManualClock]:
    clock = ManualClock()
    breaker = MemoryBreaker(BreakerConfig(), clock=clock)
    pair = Recording(limiter, breaker)  # type: ignore[arg-type]
    pair.finished = []
    gate = Gate(limiter, breaker, AdmissionConfig(), ledger=ledger,  # type: ignore[arg-type]
                prices=default_pricebook(), pair=pair, sleep=clock.sleep, rand=lambda: 0.0)
    return gate, breaker, pair, clock


def half_open(breaker: MemoryBreaker, clock: ManualClock) -> None:
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(SONNET, success=False, probe=False)
    clock.sleep(breaker.config.cooldown_s)


def job(spent: str = "0") -> StartedJob:
    return StartedJob(uuid.uuid4(), JobRequest(prompt="Analyze this", tenant="t"), "q",
                      SONNET, 1, datetime.now(UTC), Decimal(spent))


def test_a_job_is_admitted_and_finished_through_the_pair() -> None:
    gate, _, pair, _ = rig(Scripted(GRANT, GRANT, GRANT))
    go = gate.admit(job())
    assert isinstance(go, Go) and pair.admits == 1
    gate.done(go, Usage(input_tokens=1, output_tokens=1), {})
    gate.failed(go, ErrorKind.OVERLOADED, retry_after_s=None, ratelimit={})
    gate.failed(go, ErrorKind.BAD_REQUEST, retry_after_s=None, ratelimit={})
    gate.failed(go, ErrorKind.RATE_LIMITED, retry_after_s=None, ratelimit={})
    # a success; a failure the breaker counts; two outcomes that are not its business
    assert pair.finished == [(True, False), (False, False), (None, False), (None, False)]


@pytest.mark.parametrize(("kind", "told"), [(ErrorKind.BAD_REQUEST, True),
                                            (ErrorKind.RATE_LIMITED, None),
                                            (ErrorKind.TIMEOUT, False)])
def test_a_probes_outcome_is_told_with_its_release(kind: ErrorKind, told: bool | None) -> None:
    gate, _, pair, clock = rig(Scripted(GRANT))
    half_open(gate.breaker, clock)  # type: ignore[arg-type]
    go = gate.admit(job())
    assert isinstance(go, Go) and go.probe
    gate.failed(go, kind, retry_after_s=None, ratelimit={})
    assert pair.finished == [(told, True)]


def test_an_open_circuit_still_wins_over_the_cost_cap() -> None:
    gate, breaker, pair, clock = rig(Scripted())
    for _ in range(breaker.config.consecutive_failures):
        breaker.record(SONNET, success=False, probe=False)
    # $1.99 spent of the $2 cap: the call cannot go, but the circuit answers first
    got = gate.admit(job(spent="1.99"))
    assert isinstance(got, Later) and got.reason == f"circuit of {SONNET} is open"
    clock.sleep(breaker.config.cooldown_s)
    stopped = gate.admit(job(spent="1.99"))  # half-open: the breaker lets it, the cap not
    assert isinstance(stopped, Stop) and stopped.error_class == COST_CAP
    assert pair.admits == 0  # the limiter was never asked


@pytest.mark.parametrize("first", [b.Seed(0), Wait(0.25, DISCOVERY)])
def test_the_limiters_retries_take_no_second_probe(first: Any) -> None:
    limiter = Scripted(first, GRANT)
    gate, breaker, pair, clock = rig(limiter, ledger=OneDay())
    if isinstance(first, Wait):  # this process has had an answer: the discovery is retold
        gate._observe(SONNET, {}, answered=True)
    half_open(breaker, clock)
    go = gate.admit(job())
    assert isinstance(go, Go) and go.probe
    assert pair.admits == 1 and limiter.acquired == 2
    value, _ = breaker.value(SONNET)
    assert value.state is BreakerState.HALF_OPEN and len(value.probe_leases) == 1


def test_the_separate_pair_records_even_when_the_release_fails() -> None:
    class Down(Scripted):
        def release(self, grant: Grant, **kw: Any) -> None:
            raise ConnectionError("redis down")

    clock = ManualClock()
    breaker = MemoryBreaker(BreakerConfig(), clock=clock)
    pair = Separate(Down(), breaker)
    with pytest.raises(ConnectionError):
        pair.finish(SONNET, GRANT, input_tokens=1, output_tokens=1, success=False,
                    probe=False)
    assert breaker.value(SONNET)[0].failures_in_row == 1
