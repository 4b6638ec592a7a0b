"""The dead-letter queue: jobs that ended without a result, and what operators do with them.

A dead job gets a row in ``dead_letters`` (the source of truth: job, queue, final error
class and message, attempts, first and last failure) and a message on the ``dead-letter``
Celery queue (a live count in Flower's broker view, and a feed for anything that wants to
react). ``replay`` sends a dead job through the router again as a new job with a fresh
attempt budget, linked to the old one (``jobs.replay_of`` and ``dead_letters.replayed_as``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from farm.store.db import Database, dict_one, dicts, scalar

RECORD_SQL = """
    INSERT INTO dead_letters (job_id, queue, error_class, error_message, attempts,
                              first_failure_at, last_failure_at)
    SELECT j.id, j.queue, %(error_class)s, %(error_message)s, j.attempts,
           coalesce(min(a.finished_at) FILTER (WHERE a.outcome <> 'ok'), now()),
           coalesce(max(a.finished_at) FILTER (WHERE a.outcome <> 'ok'), now())
    FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id
    WHERE j.id = %(job_id)s
    GROUP BY j.id
    ON CONFLICT (job_id) DO NOTHING
"""

LIST_SQL = """
    SELECT d.*, j.tenant, j.model FROM dead_letters d JOIN jobs j ON j.id = d.job_id
    WHERE (%(include_replayed)s OR d.replayed_as IS NULL)
    ORDER BY d.dead_at DESC LIMIT %(limit)s
"""


def record(db: Database, job_id: uuid.UUID, error_class: str, error_message: str) -> bool:
    """Add the job to the DLQ once; False when it was there already."""
    with db.connect() as conn:
        return record_on(conn, job_id, error_class, error_message)


def record_on(conn: psycopg.Connection[Any], job_id: uuid.UUID, error_class: str,
              error_message: str) -> bool:
    """``record`` on ``conn``: in its transaction, when the job's row is written in it too."""
    cursor = conn.execute(RECORD_SQL, {
        "job_id": job_id, "error_class": error_class, "error_message": error_message[:4000],
    })
    return bool(cursor.rowcount)


def entries(db: Database, *, limit: int = 100, include_replayed: bool = False,
            ) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return dicts(conn, LIST_SQL, {"limit": limit, "include_replayed": include_replayed})


def entry(db: Database, job_id: uuid.UUID) -> dict[str, Any] | None:
    with db.connect() as conn:
        return dict_one(conn, "SELECT d.*, j.request, j.tenant, j.model, j.error AS job_error "
                              "FROM dead_letters d JOIN jobs j ON j.id = d.job_id "
                              "WHERE d.job_id = %(id)s", {"id": job_id})


def error_class(db: Database, job_id: uuid.UUID) -> str | None:
    """The error class the job was dead-lettered with; None when it has no DLQ row."""
    with db.connect() as conn:
        value = scalar(conn.execute("SELECT error_class FROM dead_letters WHERE job_id = %(id)s",
                                    {"id": job_id}))
    return None if value is None else str(value)


def replayable(db: Database, job_ids: Sequence[uuid.UUID] | None) -> list[dict[str, Any]]:
    """Dead jobs not yet replayed (all of them when job_ids is None), with their requests;
    without their idempotency key: a replay is a new job, the key stays with the dead one."""
    sql = ("SELECT d.job_id, j.request - 'idempotency_key' AS request FROM dead_letters d "
           "JOIN jobs j ON j.id = d.job_id WHERE d.replayed_as IS NULL")
    params: dict[str, Any] = {}
    if job_ids is not None:
        sql += " AND d.job_id = ANY(CAST(%(ids)s AS uuid[]))"
        params["ids"] = list(job_ids)
    with db.connect() as conn:
        return dicts(conn, sql + " ORDER BY d.dead_at", params)


def mark_replayed(db: Database, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
    if not pairs:
        return
    params = [{"old": old, "new": new} for old, new in pairs]
    # one pipelined executemany per statement, not two round trips a job
    with db.begin() as conn, conn.cursor() as cursor:
        cursor.executemany("UPDATE dead_letters SET replayed_as = %(new)s, "
                           "replayed_at = now() "
                           "WHERE job_id = %(old)s AND replayed_as IS NULL", params)
        cursor.executemany("UPDATE jobs SET replay_of = %(old)s WHERE id = %(new)s", params)


def purge(db: Database) -> int:
    """Delete every DLQ row; returns how many. The jobs themselves stay."""
    with db.connect() as conn:
        return int(conn.execute("DELETE FROM dead_letters").rowcount)
