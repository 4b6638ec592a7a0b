"""Budgets, pure (farm.costs.budgets): what they are, their periods, what they cover, and the
decision before a call (its Lua twin is checked in tests/integration/test_ledger.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from farm.costs import budgets as b
from farm.costs.controls import make


def budget(scope: b.Scope = b.Scope.TENANT, name: str = "search", **kw: object) -> b.Budget:
    fields: dict[str, object] = {"scope": scope, "name": name, "period": b.Period.DAY,
                                 "limit_usd": Decimal(50), **kw}
    return b.Budget.model_validate(fields)


def test_ids_name_scope_name_and_period() -> None:
    assert budget().id == "tenant:search:day"
    assert budget(b.Scope.GLOBAL, "").id == "global:day"
    assert budget(b.Scope.MODEL, "claude-haiku-4-5", period=b.Period.MONTH).id == \
        "model:claude-haiku-4-5:month"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"scope": "global", "name": "x"}, "a global budget has no name"),
    ({"scope": "tenant", "name": ""}, "a tenant budget needs the tenant's name"),
    ({"name": "a b"}, "letters, digits"),
    ({"limit_usd": Decimal(0)}, "greater than 0"),
    ({"limit_usd": Decimal("-1")}, "greater than 0"),
    ({"mode": "soft"}, "a soft budget needs the share"),
    ({"alert_share": 1.5}, "less than or equal to 1"),
    ({"period": "week"}, "'hour', 'day' or 'month'"),
    ({"on_exceed": "explode"}, "'wait' or 'fail'"),
])
def test_bad_budgets_are_refused_naming_the_problem(fields: dict[str, object],
                                                    problem: str) -> None:
    base: dict[str, object] = {"scope": "tenant", "name": "search", "period": "day",
                               "limit_usd": Decimal(5)}
    with pytest.raises(ValidationError, match=problem.replace("(", r"\(")):
        b.Budget.model_validate({**base, **fields})


def test_make_reads_the_commands_words() -> None:
    soft = make(usd="1000", period="month", soft=0.8)
    assert (soft.scope, soft.mode, soft.alert_share, soft.limit_usd) == (
        b.Scope.GLOBAL, b.Mode.SOFT, 0.8, Decimal(1000))
    hard = make("tenant", "a", usd=5, alert_at=0.5, on_exceed="fail")
    assert (hard.mode, hard.alert_share, hard.on_exceed) == (b.Mode.HARD, 0.5, b.OnExceed.FAIL)
    with pytest.raises(ValueError, match="drop alert_at"):
        make(usd=5, soft=0.5, alert_at=0.4)


def test_what_a_budget_covers() -> None:
    cases = {
        budget(b.Scope.GLOBAL, ""): (True, True, True),
        budget(b.Scope.TENANT, "t"): (True, False, False),
        budget(b.Scope.QUEUE, "q"): (False, True, False),
        budget(b.Scope.MODEL, "m"): (False, False, True),
    }
    for x, (by_tenant, by_queue, by_model) in cases.items():
        assert x.covers("t", "other", "other") is (by_tenant or x.scope is b.Scope.GLOBAL)
        assert x.covers("other", "q", "other") is (by_queue or x.scope is b.Scope.GLOBAL)
        assert x.covers("other", "other", "m") is (by_model or x.scope is b.Scope.GLOBAL)
    all_of = list(cases)
    assert [x.id for x in b.covering(all_of, "t", "q", "m")] == [
        "global:day", "model:m:day", "queue:q:day", "tenant:t:day"]
    assert [x.id for x in b.covering(all_of, "u", "r", "n")] == ["global:day"]


@pytest.mark.parametrize(("period", "now", "key", "start", "end"), [
    (b.Period.HOUR, datetime(2026, 12, 1, 13, 59, 59, 999999, UTC), "2026-12-01T13",
     datetime(2026, 12, 1, 13, tzinfo=UTC), datetime(2026, 12, 1, 14, tzinfo=UTC)),
    (b.Period.DAY, datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "2026-12-31",
     datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    (b.Period.MONTH, datetime(2028, 2, 29, 12, tzinfo=UTC), "2028-02",
     datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
    (b.Period.MONTH, datetime(2026, 12, 15, tzinfo=UTC), "2026-12",
     datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    # periods are UTC's: 01:00 in UTC+2 on the 2nd is still the 1st in UTC
    (b.Period.DAY, datetime(2026, 12, 2, 1, tzinfo=timezone(timedelta(hours=2))),
     "2026-12-01", datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)),
])
def test_periods_are_utc_calendar_periods(period: b.Period, now: datetime, key: str,
                                          start: datetime, end: datetime) -> None:
    assert b.window(period, now) == b.Window(key, start, end)


def test_every_moment_of_a_year_is_in_exactly_its_period() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    while t.year == 2026:
        for period in b.Period:
            w = b.window(period, t)
            assert w.start <= t < w.end
            assert b.window(period, w.end).start == w.end  # periods tile time
        t += timedelta(hours=7, minutes=13)


def s(limit: int, spent: int = 0, reserved: int = 0, *, hard: bool = True,
      fail: bool = False, seeded: bool = True) -> b.Standing:
    return b.Standing(limit, hard, fail, seeded, spent, reserved)


@pytest.mark.parametrize(("standings", "cost", "decision"), [
    ([], 5, b.Reserve()),
    ([s(100)], 100, b.Reserve()),  # exactly the limit fits
    ([s(100, 60, 40)], 1, b.Busy(0)),  # only reservations are in the way
    ([s(100, 60, 30)], 10, b.Reserve()),
    ([s(100, 95)], 10, b.Exhausted(0, False)),  # spent itself leaves no room
    ([s(100, 95, fail=True)], 10, b.Exhausted(0, True)),
    ([s(100, 500, hard=False)], 10, b.Reserve()),  # soft budgets never block
    ([s(100, seeded=False)], 1, b.Seed(0)),
    ([s(100), s(10, 5, 5)], 1, b.Busy(1)),  # every covering budget must fit
    ([s(100, 100), s(10, seeded=False)], 1, b.Exhausted(0, False)),  # the first decides
    ([s(100), s(10, seeded=False, hard=False)], 1, b.Seed(1)),  # soft ones are counted too
])
def test_the_decision_before_a_call(standings: list[b.Standing], cost: int,
                                    decision: b.Decision) -> None:
    assert b.decide(standings, cost) == decision


def test_settling_gives_the_reservation_back_and_spends_the_actual_cost() -> None:
    assert b.settle(s(100, 10, 30), 30, 12, held=True) == s(100, 22, 0)
    # a reservation the ledger no longer held (it expired): only the spend counts
    assert b.settle(s(100, 10, 0), 30, 12, held=False) == s(100, 22, 0)
    # a period never seeded stays so (Postgres has the call, the seed will count it)
    assert b.settle(s(100, seeded=False), 30, 12, held=False) == s(100, seeded=False)


def test_describe_says_what_a_budget_does() -> None:
    assert budget().describe() == "hard $50.00 a day for tenant search, wait at the limit"
    soft = make(usd="1000", period="month", soft=0.8)
    assert soft.describe() == "soft $1,000.00 a month for the farm, alert at 80%"
