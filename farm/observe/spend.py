"""The budgets and the cost breakers for the cockpit, read only: each budget's current period
(farm.costs.controls.Budgets: the budgets from Postgres, their spend and reservations from
the ledger's Redis state, or Postgres' attempts for a period no call has been counted in
yet), and each configured cost breaker's spend rate and state (farm.costs.ledger.Ledger).

Breakers are read for the scopes that have a threshold in the settings only: the overall one
('all', FARM_COST_BREAKER_USD_PER_MIN) and each model of FARM_COST_BREAKER_MODEL_USD_PER_MIN;
the ledger keeps no spend window for a scope no breaker watches.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from farm.costs.ledger import OVERALL, Ledger
from farm.observe.figures import BudgetFigures, CostBreaker
from farm.settings import Settings
from farm.store.db import Database


def budgets(broker: Any, db: Database) -> tuple[BudgetFigures, ...]:
    """Every budget in its current period, by id."""
    from farm.costs.controls import Budgets

    views = Budgets(broker, db, lambda _reason: 0).list()  # reading never wakes a job
    return tuple(sorted((BudgetFigures(
        budget=v.budget.id, scope=v.budget.scope.value, period=v.budget.period.value,
        mode=v.budget.mode.value, limit_usd=v.budget.limit_usd, spent_usd=v.spent_usd,
        reserved_usd=v.reserved_usd, alert_share=v.budget.alert_share,
        refusing=v.refusing) for v in views),
        key=lambda f: f.budget))


def breaker_scopes(settings: Settings) -> list[tuple[str, Decimal]]:
    """(scope, threshold in USD a minute) of every configured cost breaker."""
    scopes = [] if settings.cost_breaker_usd_per_min is None else [
        (OVERALL, settings.cost_breaker_usd_per_min)]
    return scopes + sorted(settings.cost_breaker_model_usd_per_min.items())


def _float(raw: Any) -> float | None:
    try:
        return float(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError):
        return None


def cost_breakers(broker: Any, settings: Settings) -> tuple[CostBreaker, ...]:
    """The configured cost breakers: spend rate, threshold, open and since when."""
    from farm.capacity.build import ledger_config

    scopes = breaker_scopes(settings)
    if not scopes:
        return ()
    ledger = Ledger(broker, None, ledger_config(settings), list)
    out = []
    for scope, threshold in scopes:
        rate, is_open = ledger.breaker_state(scope)
        since = _float(broker.get(ledger.breaker_keys(scope)[1])) if is_open else None
        out.append(CostBreaker(scope, rate, threshold, is_open, since))
    return tuple(out)
