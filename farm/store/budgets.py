"""The budgets' rows in Postgres, the record of what was set (Redis holds a mirror the
workers read), and the spend of a budget's period as the attempt rows tell it (what a
period's count in Redis is rebuilt from)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.costs.budgets import Budget, Scope

UPSERT_SQL = text("""
    INSERT INTO budgets (id, scope, name, period, limit_usd, mode, alert_share, on_exceed)
    VALUES (:id, :scope, :name, :period, :limit_usd, :mode, :alert_share, :on_exceed)
    ON CONFLICT (id) DO UPDATE SET limit_usd = EXCLUDED.limit_usd, mode = EXCLUDED.mode,
        alert_share = EXCLUDED.alert_share, on_exceed = EXCLUDED.on_exceed, updated_at = now()
""")

COLUMNS = ("scope", "name", "period", "limit_usd", "mode", "alert_share", "on_exceed")


def save(engine: Engine, budget: Budget) -> None:
    with engine.begin() as conn:
        conn.execute(UPSERT_SQL, {"id": budget.id, **budget.model_dump(mode="python")})


def remove(engine: Engine, budget_id: str) -> bool:
    with engine.begin() as conn:
        gone = conn.execute(text("DELETE FROM budgets WHERE id = :id RETURNING id"),
                            {"id": budget_id}).first()
    return gone is not None


def load(engine: Engine) -> list[Budget]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(COLUMNS)} FROM budgets ORDER BY id"))
        return [Budget.model_validate(dict(r)) for r in rows.mappings()]


# the attempts a budget covers: its tenant's (by the job), its queue's or model's (the call's)
_FILTER = {
    Scope.GLOBAL: "TRUE",
    Scope.TENANT: "j.tenant = :name",
    Scope.QUEUE: "a.queue = :name",
    Scope.MODEL: "a.model = :name",
}


def spent(engine: Engine, budget: Budget, start: datetime, end: datetime) -> Decimal:
    """What the calls the budget covers, started in [start, end), cost (calls of unknown
    cost count as nothing)."""
    sql = text(f"""
        SELECT coalesce(sum(a.cost_usd), 0) FROM attempts a JOIN jobs j ON j.id = a.job_id
        WHERE a.started_at >= :start AND a.started_at < :end AND {_FILTER[budget.scope]}
    """)
    with engine.connect() as conn:
        value = conn.execute(sql, {"start": start, "end": end, "name": budget.name}).scalar()
    return Decimal(value or 0)
