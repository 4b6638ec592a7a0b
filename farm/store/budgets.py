"""The budgets' rows in Postgres, the record of what was set (Redis holds a mirror the
workers read), and the spend of a budget's period as the attempt rows tell it (what a
period's count in Redis is rebuilt from). Plain SQL on the farm's psycopg connections
(``farm.store.db``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from farm.costs.budgets import Budget, Scope
from farm.store.db import Database, dicts, scalar

UPSERT_SQL = """
    INSERT INTO budgets (id, scope, name, period, limit_usd, mode, alert_share, on_exceed)
    VALUES (%(id)s, %(scope)s, %(name)s, %(period)s, %(limit_usd)s, %(mode)s, %(alert_share)s,
            %(on_exceed)s)
    ON CONFLICT (id) DO UPDATE SET limit_usd = EXCLUDED.limit_usd, mode = EXCLUDED.mode,
        alert_share = EXCLUDED.alert_share, on_exceed = EXCLUDED.on_exceed, updated_at = now()
"""

COLUMNS = ("scope", "name", "period", "limit_usd", "mode", "alert_share", "on_exceed")


def save(db: Database, budget: Budget) -> None:
    # the enums go in as their values (model_dump "json" mode); the limit stays a Decimal
    values = budget.model_dump(mode="json") | {"limit_usd": budget.limit_usd}
    with db.connect() as conn:
        conn.execute(UPSERT_SQL, {"id": budget.id, **values})


def remove(db: Database, budget_id: str) -> bool:
    with db.connect() as conn:
        gone = conn.execute("DELETE FROM budgets WHERE id = %(id)s RETURNING id",
                            {"id": budget_id}).fetchone()
    return gone is not None


def load(db: Database) -> list[Budget]:
    with db.connect() as conn:
        rows = dicts(conn, f"SELECT {', '.join(COLUMNS)} FROM budgets ORDER BY id")
    return [Budget.model_validate(row) for row in rows]


# the attempts a budget covers: its tenant's (by the job), its queue's or model's (the call's)
_FILTER = {
    Scope.GLOBAL: "TRUE",
    Scope.TENANT: "j.tenant = %(name)s",
    Scope.QUEUE: "a.queue = %(name)s",
    Scope.MODEL: "a.model = %(name)s",
}


def spent_on(conn: psycopg.Connection[Any], budget: Budget, start: datetime,
             end: datetime) -> Decimal:
    """What the calls the budget covers, started in [start, end), cost (calls of unknown
    cost count as nothing), read on the caller's connection (in its transaction, if any)."""
    sql = f"""
        SELECT coalesce(sum(a.cost_usd), 0) FROM attempts a JOIN jobs j ON j.id = a.job_id
        WHERE a.started_at >= %(start)s AND a.started_at < %(end)s
          AND {_FILTER[budget.scope]}
    """
    value = scalar(conn.execute(sql, {"start": start, "end": end, "name": budget.name}))
    return Decimal(value or 0)


def spent(db: Database, budget: Budget, start: datetime, end: datetime) -> Decimal:
    """``spent_on`` on a connection of its own."""
    with db.connect() as conn:
        return spent_on(conn, budget, start, end)
