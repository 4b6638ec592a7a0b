"""The budgets an operator sets: kept in Postgres, mirrored in Redis for the workers' ledger
(which reads each budget's limit there at every acquire, so a raised or lowered limit counts
for the very next call). After a Redis restart the first reader loads the mirror again.
The Python API (``Farm.set_budget`` …) and `farm budget` use this."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from farm.costs.budgets import Budget
from farm.costs.estimate import to_nano
from farm.store import budgets as rows
from farm.store.db import Database

PREFIX = "farm:budget"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class BudgetBook:
    def __init__(self, redis_client: Any, db: Database, prefix: str = PREFIX) -> None:
        self.redis, self.db, self.prefix = redis_client, db, prefix

    def _def(self, budget_id: str) -> str:
        return f"{self.prefix}:def:{budget_id}"

    def _mirror(self, pipe: Any, budget: Budget) -> None:
        # alert: the spend at which the budget alerts (its share, or its limit), nano-USD
        share = Decimal(str(budget.alert_share or 1.0))
        pipe.hset(self._def(budget.id), mapping={
            "budget": budget.model_dump_json(), "limit": str(to_nano(budget.limit_usd)),
            "alert": str(to_nano(budget.limit_usd * share)),
            "mode": budget.mode.value, "on_exceed": budget.on_exceed.value})
        pipe.sadd(f"{self.prefix}:ids", budget.id)

    def set(self, budget: Budget) -> None:
        """Create or change a budget: Postgres first (the record), then the mirror."""
        rows.save(self.db, budget)
        pipe = self.redis.pipeline(transaction=True)
        self._mirror(pipe, budget)
        pipe.execute()

    def remove(self, budget_id: str) -> bool:
        found = rows.remove(self.db, budget_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._def(budget_id))
        pipe.srem(f"{self.prefix}:ids", budget_id)
        pipe.execute()
        return found

    def all(self) -> list[Budget]:
        return rows.load(self.db)

    def sync(self) -> list[Budget]:
        """Load the mirror from Postgres (after Redis lost it, or to repair it)."""
        budgets = rows.load(self.db)
        ids = {_text(i) for i in self.redis.smembers(f"{self.prefix}:ids")}
        pipe = self.redis.pipeline(transaction=True)
        for stale in ids - {x.id for x in budgets}:
            pipe.delete(self._def(stale))
            pipe.srem(f"{self.prefix}:ids", stale)
        for budget in budgets:
            self._mirror(pipe, budget)
        pipe.set(f"{self.prefix}:synced", "1")
        pipe.execute()
        return budgets

    def mirrored(self) -> list[Budget]:
        """The budgets as the workers see them: the Redis mirror, loaded first if missing."""
        if not self.redis.exists(f"{self.prefix}:synced"):
            return self.sync()
        ids = sorted(_text(i) for i in self.redis.smembers(f"{self.prefix}:ids"))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for budget_id in ids:
            pipe.hget(self._def(budget_id), "budget")
        return [Budget.model_validate_json(raw) for raw in pipe.execute() if raw is not None]
