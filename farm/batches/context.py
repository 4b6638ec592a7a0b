"""What the batch loop works with: the worker process's runtime (database, provider client,
prices, retry policies, the hold, the spend ledger), the batch settings, and the way to the
dead-letter queue (the worker's Celery app publishes its message). Built at the edge, once
per worker process (farm.batches.loop.start)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import anthropic

from farm.batches.policy import BatchConfig
from farm.settings import Settings
from farm.store.db import Database
from farm.worker import runtime as rt

# (job id, queue, error class, message): the job's DLQ row and message, once
DeadLetter = Callable[[uuid.UUID, str, str, str], Any]


@dataclass(frozen=True)
class Batching:
    runtime: rt.Runtime
    config: BatchConfig
    dead_letter: DeadLetter

    @property
    def db(self) -> Database:
        return self.runtime.db

    @property
    def client(self) -> anthropic.Anthropic:
        return self.runtime.client

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def patience_s(self) -> float:
        return self.runtime.settings.db_patience_s

    def spend(self, tenant: str, queue: str, model: str, cost: Decimal | None) -> None:
        """A recorded batch result's cost into the spend ledger's budgets in Redis, as a
        synchronous call's settles there. Not into the cost breakers: they watch the rate
        of spend, and a batch's results, billed over hours, are recorded within seconds.
        Never raises: Redis trouble must not cost a recorded result (Postgres has it; a
        budget's period is rebuilt from there)."""
        ledger = self.runtime.gate.ledger
        if ledger is None or cost is None:
            return
        try:
            charge = ledger.charge(tenant, queue, model, None)  # reserves nothing
            if charge is not None and charge.covered:
                ledger.settle(replace(charge, breakers=()), cost)
        except Exception as exc:
            import logging

            logging.getLogger("farm.batches").warning("spend ledger: %s", type(exc).__name__)
