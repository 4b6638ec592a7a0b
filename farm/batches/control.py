"""What an operator does with batches (`farm batches list | show | cancel`): read them, with
their recorded results' count and cost, and cancel one: its jobs that are still on it are
cancelled (in Postgres, at once) and the provider's batch is cancelled, so that what it has
not processed yet is neither run nor billed. Results that come anyway (processed before the
cancel) are recorded with their cost; the cancelled jobs stay cancelled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anthropic

from farm.batches import rows
from farm.store.db import Database


def listing(db: Database, *, limit: int = 50, status: str | None = None
            ) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return rows.listing(conn, limit=limit, status=status)


def show(db: Database, ident: str) -> dict[str, Any]:
    """One batch by the farm's id or the provider's; KeyError when there is none."""
    with db.connect() as conn:
        found = rows.find(conn, ident)
    if found is None:
        raise KeyError(f"no batch {ident} (give the farm's id or the provider's msgbatch_ id)")
    return found


@dataclass(frozen=True)
class Cancelled:
    batch: dict[str, Any]
    jobs: int  # jobs cancelled by this call
    provider: str  # what the provider said: "canceling", "ended already", "not created"


def cancel(db: Database, client: anthropic.Anthropic, ident: str) -> Cancelled:
    """Cancel a batch: its jobs still on it, then the provider's batch. KeyError: no batch."""
    batch = show(db, ident)
    with db.connect() as conn:
        jobs = rows.cancel_jobs(conn, batch["id"])
    provider_id = batch["provider_id"]
    if provider_id is None:
        # a batch still being created: its creator finds every job cancelled and the poller
        # cancels it at the provider as soon as it has its id
        return Cancelled(batch, len(jobs), "not created yet")
    if batch["status"] not in ("in_progress", "canceling"):
        return Cancelled(batch, len(jobs), f"{batch['status']} already")
    try:
        got = client.messages.batches.cancel(provider_id)
    except anthropic.BadRequestError:  # it ended meanwhile: nothing left to cancel
        got = client.messages.batches.retrieve(provider_id)
        return Cancelled(batch, len(jobs), f"{got.processing_status} already")
    with db.connect() as conn:
        rows.progress(conn, batch["id"], got.processing_status, None, 0.0)
    return Cancelled(batch, len(jobs), got.processing_status)
