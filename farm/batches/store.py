"""The jobs' side of Message Batches in Postgres: the jobs waiting for a batch, the claim
that puts some into a new batch row (one statement: the jobs start, the batch row and its
items are written, or nothing is), the release of a batch that was never created, and the
budgets' room at flush. The batches' own rows are farm.batches.rows'.

A job in a batch is ``running`` with no lease (neither the reaper nor a worker's start
touches it: both want a lease that ran out), its attempt counted as a synchronous start
counts it; ``batch_items`` ties the attempt to the batch, so a result streamed twice (two
pollers, a restart) is recorded once: the attempt's primary key (job_id, attempt). A
memoizing job's item carries its memo key (farm.batches.memo): identical jobs wait while it
is in flight.

Statements run on the caller's connection: the batch loop's connections are the worker's
(farm.store.db), autocommit, where each one is its own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection

from farm.batches.admit import Room
from farm.batches.policy import Waiting
from farm.costs.budgets import Budget, Mode, Scope, window
from farm.jobs import JobRequest
from farm.store import budgets as budget_rows
from farm.store.db import dict_one, scalar

# a job waiting for a batch, due (a retry's backoff over)
DUE = "batched AND status = 'queued' AND (next_run_at IS NULL OR next_run_at <= now())"

WAITING_SQL = f"""
    SELECT model, count(*) AS n, coalesce(sum(pg_column_size(request)), 0) AS bytes,
           extract(epoch FROM now() - min(coalesce(next_run_at, created_at))) AS age_s
    FROM jobs WHERE {DUE} GROUP BY model ORDER BY model
"""

CANDIDATES_SQL = f"""
    SELECT id, request, queue, model, tenant, attempts, coalesce(cost_usd, 0) AS spent,
           second_opinion, routing_calls
    FROM jobs WHERE {DUE} AND model = %(model)s
    ORDER BY coalesce(next_run_at, created_at), id LIMIT %(limit)s
"""

# The jobs start (attempt counted, no lease), the batch row and its items are written: one
# statement, so a crash leaves all of it or none. Jobs cancelled or taken meanwhile drop out;
# with none left, no batch row is written.
CLAIM_SQL = """
    WITH wanted AS (
        SELECT * FROM unnest(CAST(%(ids)s AS uuid[]), CAST(%(worst)s AS numeric[]),
                             CAST(%(memo_keys)s AS text[])) AS w(id, worst, memo_key)
    ), claimed AS (
        UPDATE jobs SET status = 'running', attempts = attempts + 1,
                        started_at = coalesce(started_at, now()), lease_until = NULL,
                        next_run_at = NULL, wait_reason = %(reason)s
        FROM wanted
        WHERE jobs.id = wanted.id AND jobs.batched AND jobs.status = 'queued'
          AND jobs.model = %(model)s
        RETURNING jobs.id, jobs.attempts, wanted.worst, wanted.memo_key
    ), batch AS (
        INSERT INTO batches (id, model, status, request_count, bytes)
        SELECT %(batch_id)s, %(model)s, 'creating', count(*), %(bytes)s
        FROM claimed HAVING count(*) > 0
        RETURNING id
    ), items AS (
        INSERT INTO batch_items (batch_id, job_id, attempt, worst_usd, memo_key)
        SELECT batch.id, claimed.id, claimed.attempts, claimed.worst, claimed.memo_key
        FROM claimed, batch
    )
    SELECT id, attempts FROM claimed
"""

# a batch the provider never created: its jobs wait again (the attempt given back), its
# items go, its row says why
RELEASE_SQL = """
    WITH items AS (
        DELETE FROM batch_items WHERE batch_id = %(batch_id)s RETURNING job_id, attempt
    ), jobs_back AS (
        UPDATE jobs SET status = 'queued', attempts = jobs.attempts - 1,
            started_at = CASE WHEN jobs.attempts = 1 THEN NULL ELSE jobs.started_at END,
            next_run_at = now() + make_interval(secs => %(wait_s)s),
            wait_reason = %(reason)s
        FROM items
        WHERE jobs.id = items.job_id AND jobs.status = 'running'
          AND jobs.attempts = items.attempt
        RETURNING jobs.id
    )
    UPDATE batches SET status = 'failed', error = %(error)s, next_poll_at = NULL
    WHERE id = %(batch_id)s AND status = 'creating'
    RETURNING (SELECT count(*) FROM jobs_back) AS released
"""

STOP_SQL = f"""
    UPDATE jobs SET status = 'dead', error = %(error)s, finished_at = now(),
                    next_run_at = NULL, wait_reason = NULL
    WHERE id = %(id)s AND {DUE}
    RETURNING queue, model, created_at
"""

WAIT_SQL = """
    UPDATE jobs SET next_run_at = now() + make_interval(secs => %(wait_s)s),
                    wait_reason = %(reason)s
    WHERE id = ANY(%(ids)s) AND batched AND status = 'queued'
"""

# the worst cases held by requests of batches in flight whose results are not recorded yet
IN_FLIGHT_SQL = """
    SELECT coalesce(sum(i.worst_usd), 0) FROM batch_items i
    JOIN batches b ON b.id = i.batch_id JOIN jobs j ON j.id = i.job_id
    WHERE b.status IN ('creating', 'in_progress', 'canceling', 'ended')
      AND j.status = 'running' AND j.attempts = i.attempt AND {where}
"""
# the memo keys of requests in batches in flight: their jobs still on them, or their
# results being recorded (until the batch is done, after the answers got their keys: a
# result recorded a moment before its key is never taken for one without an answer)
KEYS_IN_FLIGHT_SQL = """
    SELECT DISTINCT j.tenant, i.memo_key FROM batch_items i
    JOIN batches b ON b.id = i.batch_id JOIN jobs j ON j.id = i.job_id
    WHERE b.status IN ('creating', 'in_progress', 'canceling', 'ended')
      AND i.memo_key = ANY(CAST(%(keys)s AS text[]))
      AND (b.status = 'ended' OR (j.status = 'running' AND j.attempts = i.attempt))
"""
_FILTER = {Scope.GLOBAL: "TRUE", Scope.TENANT: "j.tenant = %(name)s",
           Scope.QUEUE: "j.queue = %(name)s", Scope.MODEL: "j.model = %(name)s"}

FLUSH_LOCK = 0x0FA2B0  # the first key of a model's flush lock (the second: hashtext(model))


@dataclass(frozen=True)
class WaitingJob:
    """A job waiting for a batch, as the flush reads it."""

    id: uuid.UUID
    request: JobRequest
    queue: str
    model: str
    tenant: str
    attempts: int
    spent: Decimal
    second_opinion: bool
    routing_calls: int


def waiting(conn: Connection[Any]) -> list[Waiting]:
    """Per model, the jobs waiting for a batch that are due (their bytes: the requests' stored
    size, a cheap estimate)."""
    return [Waiting(row.model, int(row.n), int(row.bytes), float(row.age_s or 0.0))
            for row in conn.execute(WAITING_SQL)]


def candidates(conn: Connection[Any], model: str, limit: int) -> list[WaitingJob]:
    """A model's due waiting jobs, longest waiting first."""
    rows = conn.execute(CANDIDATES_SQL, {"model": model, "limit": limit})
    return [WaitingJob(row.id, JobRequest.model_validate(row.request), row.queue, row.model,
                       row.tenant, row.attempts, Decimal(row.spent), row.second_opinion,
                       row.routing_calls) for row in rows]


def try_flush_lock(conn: Connection[Any], model: str) -> bool:
    """The model's flush lock (a session lock of this connection): one flusher per model
    in the whole farm, held until it has created its batches or given their jobs back. A
    batch row still ``creating`` while nobody holds its model's lock was left by a crash."""
    return bool(scalar(conn.execute("SELECT pg_try_advisory_lock(%(k)s, hashtext(%(m)s))",
                                    {"k": FLUSH_LOCK, "m": model})))


def flush_unlock(conn: Connection[Any], model: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%(k)s, hashtext(%(m)s))",
                 {"k": FLUSH_LOCK, "m": model})


def claim(conn: Connection[Any], batch_id: uuid.UUID, model: str,
          jobs: Sequence[tuple[uuid.UUID, Decimal | None, str | None]], nbytes: int,
          reason: str) -> dict[uuid.UUID, int]:
    """Start these jobs (id, worst case, memo key) in a new batch row (status creating);
    returns the attempt of each job claimed (those cancelled or taken meanwhile are left
    out; none: no row)."""
    rows = conn.execute(CLAIM_SQL, {
        "batch_id": batch_id, "model": model, "ids": [j for j, _, _ in jobs],
        "worst": [w for _, w, _ in jobs], "memo_keys": [k for _, _, k in jobs],
        "bytes": nbytes, "reason": reason[:500]})
    return {row.id: row.attempts for row in rows}


def release(conn: Connection[Any], batch_id: uuid.UUID, *, wait_s: float, reason: str,
            error: str) -> int | None:
    """A batch the provider does not have: its jobs wait again (due in ``wait_s``), its row
    is failed with ``error``. Returns how many jobs went back; None when the row was no
    longer creating (another worker adopted or released it)."""
    row = conn.execute(RELEASE_SQL, {"batch_id": batch_id, "wait_s": wait_s,
                                     "reason": reason[:500], "error": error[:2000]}).fetchone()
    return None if row is None else int(row.released)


def stop(conn: Connection[Any], job_id: uuid.UUID, error: str) -> dict[str, Any] | None:
    """A waiting job that must make no call: dead, with the reason. None when it was no
    longer waiting (cancelled meanwhile)."""
    return dict_one(conn, STOP_SQL, {"id": job_id, "error": error[:4000]})


def wait_more(conn: Connection[Any], job_ids: Sequence[uuid.UUID], wait_s: float,
              reason: str) -> None:
    if job_ids:
        conn.execute(WAIT_SQL, {"ids": list(job_ids), "wait_s": wait_s,
                                "reason": reason[:500]})


def keys_in_flight(conn: Connection[Any], wanted: AbstractSet[tuple[str, str]]
                   ) -> set[tuple[str, str]]:
    """Those of ``wanted`` (tenant, memo key) that a batch in flight carries."""
    if not wanted:
        return set()
    found = conn.execute(KEYS_IN_FLIGHT_SQL, {"keys": sorted({k for _, k in wanted})})
    return {(row.tenant, row.memo_key) for row in found} & set(wanted)


def rooms(conn: Connection[Any], budgets: Sequence[Budget], now: datetime) -> list[Room]:
    """The hard budgets' periods: spent (the attempt rows, farm.store.budgets) and held by
    batches in flight."""
    out = []
    for budget in budgets:
        if budget.mode is not Mode.HARD:
            continue
        w = window(budget.period, now)
        spent = budget_rows.spent_on(conn, budget, w.start, w.end)
        held = scalar(conn.execute(IN_FLIGHT_SQL.format(where=_FILTER[budget.scope]),
                                   {"name": budget.name}))
        out.append(Room(budget, spent, Decimal(held or 0)))
    return out
