"""The batches' rows in Postgres: the provider's id kept as soon as it is known, the batches
due for a poll (taken for a while with SKIP LOCKED, so that two workers never poll the same
one at once, and a dead poller's batch comes back to the others), their progress, the items
a batch's results are recorded against, and what `farm batches` shows.

Statuses: ``creating`` (the row and its items are written, the provider not yet known to
have it), ``in_progress`` and ``canceling`` (the provider's), ``ended`` (its results are
being recorded), ``done`` (all recorded), ``failed`` (never created: its jobs went back).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection

from farm.jobs import JobRequest
from farm.store.db import dict_one, dicts, scalar, scalars
from farm.store.jobs import StartedJob

OPEN = ("in_progress", "canceling", "ended")  # followed by the poller


@dataclass(frozen=True)
class BatchRow:
    id: uuid.UUID
    provider_id: str | None
    model: str
    status: str
    request_count: int
    created_at: datetime
    submitted_at: datetime | None
    polls: int


_COLUMNS = "id, provider_id, model, status, request_count, created_at, submitted_at, polls"


def _row(row: Any) -> BatchRow:
    return BatchRow(row.id, row.provider_id, row.model, row.status, row.request_count,
                    row.created_at, row.submitted_at, row.polls)


CREATED_SQL = """
    UPDATE batches SET provider_id = %(provider_id)s, status = 'in_progress',
        submitted_at = coalesce(submitted_at, now()), error = NULL,
        next_poll_at = now() + make_interval(secs => %(poll_s)s)
    WHERE id = %(id)s AND status = 'creating'
    RETURNING id
"""


def created(conn: Connection[Any], batch_id: uuid.UUID, provider_id: str,
            poll_s: float) -> bool:
    """The provider has the batch (its create answered, or reconcile found it): its id is
    kept and it is polled from ``poll_s`` on. False when the row was no longer creating."""
    return conn.execute(CREATED_SQL, {"id": batch_id, "provider_id": provider_id,
                                      "poll_s": poll_s}).fetchone() is not None


DUE_SQL = f"""
    UPDATE batches SET next_poll_at = now() + make_interval(secs => %(lease_s)s),
                       polls = polls + 1
    WHERE id IN (SELECT id FROM batches
                 WHERE status IN {OPEN} AND next_poll_at <= now()
                 ORDER BY next_poll_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING {_COLUMNS}
"""


def due(conn: Connection[Any], *, lease_s: float, limit: int = 10) -> list[BatchRow]:
    """Batches due for a poll, each taken for ``lease_s`` (a poller that dies gives it back
    when that runs out)."""
    return [_row(r) for r in conn.execute(DUE_SQL, {"lease_s": lease_s, "limit": limit})]


def progress(conn: Connection[Any], batch_id: uuid.UUID, status: str,
             counts: dict[str, int] | None, next_poll_s: float) -> None:
    conn.execute(
        "UPDATE batches SET status = %(status)s, "
        "request_counts = coalesce(CAST(%(counts)s AS jsonb), request_counts), "
        "next_poll_at = now() + make_interval(secs => %(s)s) "
        "WHERE id = %(id)s AND status IN ('in_progress', 'canceling', 'ended')",
        {"id": batch_id, "status": status, "counts": _json(counts), "s": next_poll_s})


def ended(conn: Connection[Any], batch_id: uuid.UUID, counts: dict[str, int] | None,
          ended_at: datetime | None, lease_s: float) -> None:
    """The provider ended the batch: its results are recorded now (the row stays taken for
    ``lease_s`` more)."""
    conn.execute(
        "UPDATE batches SET status = 'ended', request_counts = CAST(%(counts)s AS jsonb), "
        "ended_at = coalesce(%(ended_at)s, ended_at, now()), "
        "next_poll_at = now() + make_interval(secs => %(s)s) "
        "WHERE id = %(id)s AND status IN ('in_progress', 'canceling', 'ended')",
        {"id": batch_id, "counts": _json(counts), "ended_at": ended_at, "s": lease_s})


def touch(conn: Connection[Any], batch_id: uuid.UUID, lease_s: float) -> None:
    """The poller is still at the batch: it stays taken ``lease_s`` more."""
    conn.execute("UPDATE batches SET next_poll_at = now() + make_interval(secs => %(s)s) "
                 "WHERE id = %(id)s AND status = 'ended'", {"id": batch_id, "s": lease_s})


def done(conn: Connection[Any], batch_id: uuid.UUID) -> None:
    conn.execute("UPDATE batches SET status = 'done', next_poll_at = NULL "
                 "WHERE id = %(id)s AND status = 'ended'", {"id": batch_id})


def _json(counts: dict[str, int] | None) -> str | None:
    return None if counts is None else json.dumps(counts, sort_keys=True)


ITEMS_SQL = """
    SELECT i.job_id, i.attempt, i.memo_key, j.request, j.queue, j.model, j.created_at, j.status,
           j.attempts, coalesce(j.cost_usd, 0) AS spent, j.second_opinion, j.escalated_from,
           j.routing_calls
    FROM batch_items i JOIN jobs j ON j.id = i.job_id
    WHERE i.batch_id = %(batch_id)s
      AND (CAST(%(ids)s AS uuid[]) IS NULL OR i.job_id = ANY(%(ids)s))
"""


@dataclass(frozen=True)
class Item:
    """One request of a batch, with its job as the attempt's recording needs it."""

    job: StartedJob  # attempt: the one this request is
    status: str  # the job's status now
    current_attempt: int  # the job's attempts now
    memo_key: str | None = None  # a memoizing job's (farm.batches.memo)


def items(conn: Connection[Any], batch_id: uuid.UUID,
          job_ids: Sequence[uuid.UUID] | None = None) -> dict[uuid.UUID, Item]:
    """The batch's requests (those of ``job_ids`` only, when given), by job id."""
    rows = conn.execute(ITEMS_SQL, {"batch_id": batch_id,
                                    "ids": None if job_ids is None else list(job_ids)})
    return {row.job_id: Item(StartedJob(
        id=row.job_id, request=JobRequest.model_validate(row.request), queue=row.queue,
        model=row.model, attempt=row.attempt, created_at=row.created_at,
        spent=Decimal(row.spent), second_opinion=row.second_opinion,
        escalated_from=row.escalated_from, routing_calls=row.routing_calls),
        row.status, row.attempts, row.memo_key) for row in rows}


UNRECORDED_SQL = """
    SELECT i.job_id FROM batch_items i
    WHERE i.batch_id = %(batch_id)s AND NOT EXISTS (
        SELECT 1 FROM attempts a WHERE a.job_id = i.job_id AND a.attempt = i.attempt)
"""


def unrecorded(conn: Connection[Any], batch_id: uuid.UUID) -> list[uuid.UUID]:
    """The batch's requests whose attempt has no row yet."""
    return scalars(conn.execute(UNRECORDED_SQL, {"batch_id": batch_id}))


def all_cancelled(conn: Connection[Any], batch_id: uuid.UUID) -> bool:
    """Whether every job of the batch has been cancelled (the batch serves nobody)."""
    return bool(scalar(conn.execute(
        "SELECT count(*) > 0 AND bool_and(j.status = 'cancelled') FROM batch_items i "
        "JOIN jobs j ON j.id = i.job_id WHERE i.batch_id = %(id)s", {"id": batch_id})))


def creating(conn: Connection[Any]) -> list[BatchRow]:
    """Rows left creating (their creator may be at it still: see farm.batches.reconcile)."""
    return [_row(r) for r in conn.execute(
        f"SELECT {_COLUMNS} FROM batches WHERE status = 'creating' ORDER BY created_at")]


def known_provider_ids(conn: Connection[Any], provider_ids: Sequence[str]) -> set[str]:
    return set(scalars(conn.execute(
        "SELECT provider_id FROM batches WHERE provider_id = ANY(%(p)s)",
        {"p": list(provider_ids)})))


def job_ids(conn: Connection[Any], batch_id: uuid.UUID) -> set[uuid.UUID]:
    return set(scalars(conn.execute("SELECT job_id FROM batch_items WHERE batch_id = %(id)s",
                                    {"id": batch_id})))


def cancel_jobs(conn: Connection[Any], batch_id: uuid.UUID) -> list[uuid.UUID]:
    """Cancel the batch's jobs that are still on it (running its attempt): their results,
    when they come, are kept with their cost and change nothing else."""
    return scalars(conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = now() FROM batch_items i "
        "WHERE i.batch_id = %(id)s AND jobs.id = i.job_id AND jobs.attempts = i.attempt "
        "AND jobs.status IN ('queued', 'running') RETURNING jobs.id", {"id": batch_id}))


# --- what `farm batches` shows ------------------------------------------------------------

SUMMARY = """
    SELECT b.*, s.recorded, s.cost_usd, s.ok
    FROM batches b LEFT JOIN LATERAL (
        SELECT count(a.attempt) AS recorded, sum(a.cost_usd) AS cost_usd,
               count(*) FILTER (WHERE a.outcome = 'ok') AS ok
        FROM batch_items i LEFT JOIN attempts a
          ON a.job_id = i.job_id AND a.attempt = i.attempt
        WHERE i.batch_id = b.id) s ON TRUE
"""


def listing(conn: Connection[Any], *, limit: int = 50, status: str | None = None
            ) -> list[dict[str, Any]]:
    """Batches newest first, each with its recorded results' count and cost."""
    where = "" if status is None else "WHERE b.status = %(status)s"
    return dicts(conn, f"{SUMMARY} {where} ORDER BY b.created_at DESC LIMIT %(limit)s",
                 {"limit": limit, "status": status})


def find(conn: Connection[Any], ident: str) -> dict[str, Any] | None:
    """One batch by the farm's id or the provider's."""
    try:
        farm_id: uuid.UUID | None = uuid.UUID(ident)
    except ValueError:
        farm_id = None
    return dict_one(conn, f"{SUMMARY} WHERE b.id = %(id)s OR b.provider_id = %(p)s",
                    {"id": farm_id, "p": ident})
