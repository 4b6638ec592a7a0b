"""A batch row left ``creating``: its creator died (or got no answer) between writing the
row and keeping the provider's id. The provider may have the batch, or not; a batch is
never created twice, so it is looked for first.

Only rows nobody is creating are looked at: the creator holds its model's flush lock
until it has kept the id or given the jobs back (farm.batches.store), and a dead process's
lock goes with its connection. The provider's batches created since a little before the row
(newest first) that no row has adopted and that hold as many requests are candidates; a
candidate that has ended is this row's when its results' custom_ids are exactly this row's
jobs: its id is kept and the poller records it. While a candidate is still in progress,
nothing can be told: the row waits. With no candidate, once FARM_BATCH_RECONCILE_S has
passed since the row was written, the jobs are released to wait for a later batch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import Connection

from farm.batches import rows, store
from farm.batches.context import Batching
from farm.batches.submit import WAITING

log = logging.getLogger("farm.batches")
SKEW = timedelta(minutes=10)  # the provider's clock against Postgres'


@dataclass(frozen=True)
class Candidate:
    """A provider batch that may be a row's: its id, whether it ended, and (ended) the
    custom_ids of its results."""

    provider_id: str
    ended: bool
    custom_ids: frozenset[str] | None = None


@dataclass(frozen=True)
class Adopt:
    provider_id: str


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Release:
    reason: str


def decide(jobs: Iterable[uuid.UUID], candidates: Iterable[Candidate], age_s: float,
           reconcile_s: float) -> Adopt | Wait | Release:
    """What to do with a row left creating, its jobs and age given. Pure."""
    ours = frozenset(str(j) for j in jobs)
    undecided = 0
    for c in candidates:
        if not c.ended:
            undecided += 1
        elif c.custom_ids == ours:
            return Adopt(c.provider_id)
    if undecided:
        return Wait(f"{undecided} provider batch(es) in progress may be it")
    if age_s < reconcile_s:
        return Wait(f"not found at the provider yet ({age_s:.0f}s of {reconcile_s:.0f}s)")
    return Release(f"not found at the provider {age_s:.0f}s after its row was written")


@dataclass
class Reconciler:
    """One per worker process: remembers the custom_ids of the ended provider batches it
    has read, so that each one's results are read once."""

    b: Batching
    seen: dict[str, frozenset[str]] = field(default_factory=dict)

    def run(self, conn: Connection[Any]) -> None:
        for row in rows.creating(conn):
            if not store.try_flush_lock(conn, row.model):
                continue  # its creator is at it still (or another reconciler)
            try:
                if any(r.id == row.id for r in rows.creating(conn)):
                    self.settle(conn, row)
            finally:
                store.flush_unlock(conn, row.model)

    def settle(self, conn: Connection[Any], row: rows.BatchRow) -> None:
        jobs = rows.job_ids(conn, row.id)
        age = (datetime.now(UTC) - row.created_at).total_seconds()
        verdict = decide(jobs, self.candidates(conn, row), age, self.b.config.reconcile_s)
        if isinstance(verdict, Adopt):
            if rows.created(conn, row.id, verdict.provider_id, 0.0):
                log.warning("batch %s: found at the provider as %s after its creator was "
                            "lost: adopted", row.id, verdict.provider_id)
        elif isinstance(verdict, Release):
            released = store.release(conn, row.id, wait_s=0, reason=WAITING,
                                     error=f"never created: {verdict.reason}")
            log.warning("batch %s: %s: %s job(s) wait for a later batch", row.id,
                        verdict.reason, released)
        else:
            log.info("batch %s is left creating: %s", row.id, verdict.reason)

    def candidates(self, conn: Connection[Any], row: rows.BatchRow) -> list[Candidate]:
        listed = []
        since = row.created_at - SKEW
        for batch in self.b.client.messages.batches.list(limit=100):
            if batch.created_at < since:
                break  # newest first: the rest are older
            if _total(batch) == row.request_count:
                listed.append(batch)
        adopted = rows.known_provider_ids(conn, [x.id for x in listed])
        out = []
        for batch in listed:
            if batch.id in adopted:
                continue
            if batch.processing_status != "ended":
                out.append(Candidate(batch.id, False))
                continue
            ids = self.seen.get(batch.id)
            if ids is None:
                ids = frozenset(e.custom_id
                                for e in self.b.client.messages.batches.results(batch.id))
                if len(self.seen) >= 1000:
                    self.seen.clear()
                self.seen[batch.id] = ids
            out.append(Candidate(batch.id, True, ids))
        return out


def _total(batch: Any) -> int:
    counts = batch.request_counts
    return int(counts.processing + counts.succeeded + counts.errored + counts.canceled
               + counts.expired)
