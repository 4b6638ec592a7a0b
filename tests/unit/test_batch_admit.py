"""The checks of a flush, pure (farm.batches.admit): the cost cap and the hard budgets at
the batch price, the jobs of one flush counting against the budgets of those after them."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from farm.batches.admit import Admit, Candidate, Room, Stop, Wait, check
from farm.capacity.admission import COST_CAP
from farm.costs.budgets import BUDGET_EXCEEDED, Budget, Mode, OnExceed, Period, Scope
from farm.costs.estimate import at_batch_price, worst_case
from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest

HAIKU = "claude-haiku-4-5"
REQUEST = JobRequest(prompt="x" * 4000, max_tokens=1000, cache="off")
SYNC = worst_case(default_pricebook()[HAIKU], REQUEST, "off")
HALF = at_batch_price(SYNC)


def job(cap: str = "2", spent: str = "0", tenant: str = "t", queue: str = "q",
        model: str = HAIKU, priced: bool = True) -> Candidate:
    return Candidate(uuid.uuid4(), tenant, queue, model, Decimal(cap), Decimal(spent),
                     HALF if priced else None)


def budget(limit: str, scope: Scope = Scope.GLOBAL, name: str = "", mode: Mode = Mode.HARD,
           on_exceed: OnExceed = OnExceed.WAIT) -> Budget:
    return Budget(scope=scope, name=name, period=Period.DAY, limit_usd=Decimal(limit),
                  mode=mode, on_exceed=on_exceed, alert_share=None if mode is Mode.HARD
                  else 0.5)


def test_the_batch_worst_case_is_half_the_synchronous_one() -> None:
    assert HALF.usd == SYNC.usd / 2 and HALF.usd > 0
    assert (HALF.input_price, HALF.output_price) == (SYNC.input_price / 2,
                                                     SYNC.output_price / 2)
    # the explanation adds up at the prices it shows
    assert f"{HALF.input_tokens:,} input tokens at $0.500/M" in HALF.explain()


def test_a_job_whose_batch_worst_case_fits_its_cap_goes() -> None:
    cap = str(HALF.usd)  # fits at the batch price, not at the synchronous one
    assert SYNC.usd > HALF.usd
    only = job(cap=cap)
    assert check([only], []) == [Admit(only.job_id)]


def test_a_job_over_its_cap_at_the_batch_price_is_stopped() -> None:
    over = job(cap="0.001", spent="0.0009")
    [verdict] = check([over], [])
    assert isinstance(verdict, Stop) and verdict.error_class == COST_CAP
    assert "batch price" in verdict.reason and "max_cost_usd" in verdict.reason


def test_the_jobs_of_a_flush_count_against_the_budget_of_those_after_them() -> None:
    limit = HALF.usd * 2 + Decimal("0.000001")  # room for two
    jobs = [job() for _ in range(3)]
    verdicts = check(jobs, [Room(budget(str(limit)), Decimal(0))])
    assert [type(v) for v in verdicts] == [Admit, Admit, Wait]
    assert isinstance(verdicts[2], Wait) and verdicts[2].reason.startswith("budget global:day:")


def test_spent_and_in_flight_batches_count() -> None:
    limit = HALF.usd * 3
    room = Room(budget(str(limit)), spent=HALF.usd, in_flight=HALF.usd)
    assert [type(v) for v in check([job(), job()], [room])] == [Admit, Wait]
    # without the in-flight batches, two would fit
    assert [type(v) for v in check([job(), job()], [Room(room.budget, HALF.usd)])] == \
        [Admit, Admit]


def test_a_spent_budget_that_fails_its_jobs_stops_them() -> None:
    room = Room(budget("1", on_exceed=OnExceed.FAIL), spent=Decimal("1"))
    [verdict] = check([job()], [room])
    assert isinstance(verdict, Stop) and verdict.error_class == BUDGET_EXCEEDED


def test_only_in_flight_reservations_make_a_failing_budget_wait() -> None:
    room = Room(budget(str(HALF.usd * 2), on_exceed=OnExceed.FAIL), spent=Decimal(0),
                in_flight=HALF.usd * 2)
    [verdict] = check([job()], [room])
    assert isinstance(verdict, Wait) and "held by batches in flight" in verdict.reason


@pytest.mark.parametrize("other", [
    budget("0.000001", Scope.TENANT, "someone-else"),
    budget("0.000001", Scope.QUEUE, "other-queue"),
    budget("0.000001", Scope.MODEL, "claude-opus-5"),
    budget("0.000001", mode=Mode.SOFT),
])
def test_budgets_that_do_not_cover_the_job_or_are_soft_do_not_stop_it(other: Budget) -> None:
    only = job()
    assert check([only], [Room(other, Decimal(100))]) == [Admit(only.job_id)]


@pytest.mark.parametrize("scope", [Scope.TENANT, Scope.QUEUE, Scope.MODEL])
def test_a_covering_budget_of_each_scope_applies(scope: Scope) -> None:
    name = {Scope.TENANT: "t", Scope.QUEUE: "q", Scope.MODEL: HAIKU}[scope]
    [verdict] = check([job()], [Room(budget("0.000001", scope, name), Decimal(0))])
    assert isinstance(verdict, Wait)


def test_an_unpriced_model_goes_unless_a_hard_budget_covers_it() -> None:
    free = job(model="claude-unknown", priced=False)
    assert check([free], []) == [Admit(free.job_id)]
    [verdict] = check([free], [Room(budget("100"), Decimal(0))])
    assert isinstance(verdict, Stop) and verdict.error_class == BUDGET_EXCEEDED
    assert "no price row" in verdict.reason
