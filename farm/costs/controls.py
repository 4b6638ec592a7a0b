"""Budgets for people: the Python API behind ``Farm.budgets`` and `farm budget`.

    with Farm() as farm:
        farm.budgets.set(tenant="search", usd="50", period="day")        # hard, jobs wait
        farm.budgets.set(usd="1000", period="month", soft=0.8)           # the whole farm
        for view in farm.budgets.list():
            print(view.budget.id, view.spent_usd, view.reserved_usd, view.remaining_usd)
        farm.budgets.remove("tenant:search:day")

Setting (raising, lowering, changing) or removing a budget counts for the very next call on
every worker; the jobs that were waiting for it are sent back to the workers at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from farm.costs import budgets as b
from farm.costs.book import BudgetBook
from farm.costs.ledger import Ledger, LedgerConfig, budget_reason
from farm.costs.money import ExactUsd
from farm.store import budgets as rows
from farm.store.db import Database

REFUSING_S = 120.0  # twice the longest deferral: a waiting job asks again within it


class BudgetView(BaseModel):
    """A budget and its current period: what is spent (calls that ended), reserved (calls in
    flight, at their worst case) and left."""

    model_config = ConfigDict(frozen=True)

    budget: b.Budget
    period: str  # the period's key: 2026-12-01, 2026-12-01T13, 2026-12
    period_end: datetime
    spent_usd: ExactUsd
    reserved_usd: ExactUsd
    remaining_usd: ExactUsd  # limit - spent - reserved (negative: overspent)
    used: float  # (spent + reserved) / limit
    alerting: bool  # at or past its alert share (a soft budget's), or spent (a hard one)
    counted_in_redis: bool  # False: no call in this period yet; spent read from Postgres
    # a hard budget turned a call away as spent within the last REFUSING_S: jobs wait for it
    # (or fail), though spent alone may be under the limit (the call's worst case was not)
    refusing: bool = False


def make(scope: str | None = None, name: str = "", *, usd: Decimal | str | int,
         period: b.Period | str = b.Period.DAY, soft: float | None = None,
         alert_at: float | None = None, on_exceed: b.OnExceed | str = b.OnExceed.WAIT,
         ) -> b.Budget:
    """A budget from the command line's or the API's words; ValueError names the problem.
    ``soft``: a soft budget alerting at that share; ``alert_at``: a hard one's alert."""
    if soft is not None and alert_at is not None:
        raise ValueError("soft: a soft budget alerts at its own share; drop alert_at")
    return b.Budget.model_validate({
        "scope": scope or b.Scope.GLOBAL, "name": name, "period": period,
        "limit_usd": Decimal(str(usd)), "mode": b.Mode.SOFT if soft is not None else b.Mode.HARD,
        "alert_share": soft if soft is not None else alert_at, "on_exceed": on_exceed})


class Budgets:
    def __init__(self, redis_client: Any, db: Database, wake: Callable[[str], int], *,
                 now: Callable[[], datetime] | None = None) -> None:
        self.book = BudgetBook(redis_client, db)
        self.db, self._wake = db, wake
        self._ledger = Ledger(redis_client, db, LedgerConfig(), self.book.mirrored, now=now)
        self._now = now or (lambda: datetime.now(UTC))

    def set(self, *, tenant: str | None = None, queue: str | None = None,
            model: str | None = None, usd: Decimal | str | int,
            period: b.Period | str = b.Period.DAY, soft: float | None = None,
            alert_at: float | None = None, on_exceed: b.OnExceed | str = b.OnExceed.WAIT,
            ) -> tuple[b.Budget, int]:
        """Create or change the budget of the farm (no tenant, queue or model), a tenant, a
        queue or a model; returns it and how many waiting jobs were sent back to run."""
        named = [(s, n) for s, n in ((b.Scope.TENANT, tenant), (b.Scope.QUEUE, queue),
                                     (b.Scope.MODEL, model)) if n is not None]
        if len(named) > 1:
            raise ValueError("a budget covers one of: the farm, a tenant, a queue, a model")
        scope, name = named[0] if named else (b.Scope.GLOBAL, "")
        budget = make(scope, name, usd=usd, period=period, soft=soft, alert_at=alert_at,
                      on_exceed=on_exceed)
        return budget, self.put(budget)

    def put(self, budget: b.Budget) -> int:
        self.book.set(budget)
        return self._wake(budget_reason(budget.id))

    def remove(self, budget_id: str) -> tuple[bool, int]:
        """Remove a budget; returns whether it existed and how many jobs it let go."""
        found = self.book.remove(budget_id)
        return found, self._wake(budget_reason(budget_id))

    def list(self) -> list[BudgetView]:
        return [self.view(x) for x in self.book.all()]

    def view(self, budget: b.Budget) -> BudgetView:
        window, spent, reserved, refused_ago = self._ledger.standing_at(budget)
        counted = spent is not None
        if spent is None:
            spent = rows.spent(self.db, budget, window.start, window.end)
        used = float((spent + reserved) / budget.limit_usd)
        share = budget.alert_share if budget.alert_share is not None else (
            1.0 if budget.mode is b.Mode.HARD else None)
        return BudgetView(budget=budget, period=window.key, period_end=window.end,
                          spent_usd=spent, reserved_usd=reserved,
                          remaining_usd=budget.limit_usd - spent - reserved, used=used,
                          alerting=share is not None and float(spent / budget.limit_usd) >= share,
                          counted_in_redis=counted,
                          refusing=refused_ago is not None and refused_ago <= REFUSING_S)
