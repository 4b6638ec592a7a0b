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

from sqlalchemy import text
from sqlalchemy.engine import Engine

RECORD_SQL = text(
    """
    INSERT INTO dead_letters (job_id, queue, error_class, error_message, attempts,
                              first_failure_at, last_failure_at)
    SELECT j.id, j.queue, :error_class, :error_message, j.attempts,
           coalesce(min(a.finished_at) FILTER (WHERE a.outcome <> 'ok'), now()),
           coalesce(max(a.finished_at) FILTER (WHERE a.outcome <> 'ok'), now())
    FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id
    WHERE j.id = :job_id
    GROUP BY j.id
    ON CONFLICT (job_id) DO NOTHING
    """
)

LIST_SQL = text(
    """
    SELECT d.*, j.tenant, j.model FROM dead_letters d JOIN jobs j ON j.id = d.job_id
    WHERE (:include_replayed OR d.replayed_as IS NULL)
    ORDER BY d.dead_at DESC LIMIT :limit
    """
)


def record(engine: Engine, job_id: uuid.UUID, error_class: str, error_message: str) -> bool:
    """Add the job to the DLQ once; False when it was there already."""
    with engine.begin() as conn:
        result = conn.execute(RECORD_SQL, {
            "job_id": job_id, "error_class": error_class, "error_message": error_message[:4000],
        })
    return bool(result.rowcount)


def entries(engine: Engine, *, limit: int = 100, include_replayed: bool = False,
            ) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(LIST_SQL, {"limit": limit, "include_replayed": include_replayed})
        return [dict(r) for r in rows.mappings()]


def entry(engine: Engine, job_id: uuid.UUID) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT d.*, j.request, j.tenant, j.model, j.error AS job_error "
                 "FROM dead_letters d JOIN jobs j ON j.id = d.job_id WHERE d.job_id = :id"),
            {"id": job_id},
        ).mappings().one_or_none()
    return None if row is None else dict(row)


def error_class(engine: Engine, job_id: uuid.UUID) -> str | None:
    """The error class the job was dead-lettered with; None when it has no DLQ row."""
    with engine.connect() as conn:
        value = conn.execute(text("SELECT error_class FROM dead_letters WHERE job_id = :id"),
                             {"id": job_id}).scalar_one_or_none()
    return None if value is None else str(value)


def replayable(engine: Engine, job_ids: Sequence[uuid.UUID] | None) -> list[dict[str, Any]]:
    """Dead jobs not yet replayed (all of them when job_ids is None), with their requests;
    without their idempotency key: a replay is a new job, the key stays with the dead one."""
    sql = ("SELECT d.job_id, j.request - 'idempotency_key' AS request FROM dead_letters d "
           "JOIN jobs j ON j.id = d.job_id WHERE d.replayed_as IS NULL")
    params: dict[str, Any] = {}
    if job_ids is not None:
        sql += " AND d.job_id = ANY(:ids)"
        params["ids"] = list(job_ids)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql + " ORDER BY d.dead_at"), params).mappings()]


def mark_replayed(engine: Engine, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
    if not pairs:
        return
    params = [{"old": old, "new": new} for old, new in pairs]
    with engine.begin() as conn:  # one executemany per statement, not two round trips a job
        conn.execute(text("UPDATE dead_letters SET replayed_as = :new, replayed_at = now() "
                          "WHERE job_id = :old AND replayed_as IS NULL"), params)
        conn.execute(text("UPDATE jobs SET replay_of = :old WHERE id = :new"), params)


def purge(engine: Engine) -> int:
    """Delete every DLQ row; returns how many. The jobs themselves stay."""
    with engine.begin() as conn:
        return int(conn.execute(text("DELETE FROM dead_letters")).rowcount)
