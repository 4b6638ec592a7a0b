"""Job persistence: every read and write of `jobs` and `attempts` (SQLAlchemy Core).

Writes are idempotent: one attempt row per (job, attempt); the terminal status is written
once (``WHERE status = 'running'``), so a second delivery cannot bill or finish a job twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from farm.db import Attempt, Job
from farm.jobs import TERMINAL_STATUSES, JobRequest, JobStatus, Route, Usage

jobs = cast(Table, Job.__table__)
attempts = cast(Table, Attempt.__table__)


@dataclass(frozen=True)
class StartedJob:
    id: uuid.UUID
    request: JobRequest
    queue: str
    model: str
    attempt: int


def new_job_row(job_id: uuid.UUID, request: JobRequest, route: Route) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": JobStatus.QUEUED.value,
        "complexity": route.complexity.value,
        "queue": route.queue,
        "model": route.model,
        "priority": request.priority.value,
        "tenant": request.tenant,
        "route_reason": route.reason,
        "request": request.model_dump(mode="json", exclude_defaults=True),
    }


def insert_jobs(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(jobs), list(rows))


def insert_job_once(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(pg_insert(jobs).values(**row).on_conflict_do_nothing(index_elements=["id"]))


def insert_failed_job(
    conn: Connection, job_id: uuid.UUID, raw: Any, queue: str, error: str
) -> None:
    """A message that carried an invalid job: record it as failed with the reason."""
    conn.execute(
        pg_insert(jobs)
        .values(
            id=job_id, status=JobStatus.FAILED.value, complexity="unknown", queue=queue,
            model="unknown", priority="normal", tenant="unknown",
            request=raw if isinstance(raw, dict) else {"raw": repr(raw)[:2000]},
            error=error[:4000], finished_at=func.now(),
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


def start_job(engine: Engine, job_id: uuid.UUID) -> StartedJob | None:
    """Mark a queued/running job running and count the attempt; None if it must not run."""
    with engine.begin() as conn:
        row = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(["queued", "running"]))
            .values(
                status=JobStatus.RUNNING.value,
                attempts=jobs.c.attempts + 1,
                started_at=func.coalesce(jobs.c.started_at, func.now()),
            )
            .returning(jobs.c.request, jobs.c.queue, jobs.c.model, jobs.c.attempts)
        ).one_or_none()
    if row is None:
        return None
    return StartedJob(
        id=job_id,
        request=JobRequest.model_validate(row.request),
        queue=row.queue,
        model=row.model,
        attempt=row.attempts,
    )


def _usage_values(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


def record_attempt(
    conn: Connection,
    job: StartedJob,
    *,
    model: str,
    outcome: str,
    started_at: datetime,
    latency_s: float,
    usage: Usage | None = None,
    cost: Decimal | None = None,
    http_status: int | None = None,
    error: str | None = None,
    request_id: str | None = None,
) -> bool:
    """Insert the attempt row once; returns False when it was already there."""
    result = conn.execute(
        pg_insert(attempts)
        .values(
            job_id=job.id, attempt=job.attempt, queue=job.queue, model=model, outcome=outcome,
            http_status=http_status, error=error, cost_usd=cost,
            latency_ms=round(latency_s * 1000), request_id=request_id,
            started_at=started_at, finished_at=started_at + timedelta(seconds=latency_s),
            **_usage_values(usage or Usage()),
        )
        .on_conflict_do_nothing(constraint="uq_attempts_job_attempt")
    )
    return bool(result.rowcount)


def finish_job(
    conn: Connection,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    response_text: str | None = None,
    stop_reason: str | None = None,
    served_model: str | None = None,
    error: str | None = None,
) -> bool:
    """Write the terminal state once, totals summed from the attempt rows.

    A cancelled job keeps its status; its late result is still recorded.
    """
    totals = conn.execute(
        select(
            func.coalesce(func.sum(attempts.c.input_tokens), 0),
            func.coalesce(func.sum(attempts.c.output_tokens), 0),
            func.coalesce(func.sum(attempts.c.cache_creation_input_tokens), 0),
            func.coalesce(func.sum(attempts.c.cache_read_input_tokens), 0),
            func.sum(attempts.c.cost_usd),
            func.coalesce(func.bool_or(attempts.c.cost_usd.is_(None)), False),
        ).where(attempts.c.job_id == job_id)
    ).one()
    values: dict[str, Any] = {
        "input_tokens": totals[0], "output_tokens": totals[1],
        "cache_creation_input_tokens": totals[2], "cache_read_input_tokens": totals[3],
        "cost_usd": None if totals[5] else totals[4], "cost_unknown": totals[5],
        "response_text": response_text, "stop_reason": stop_reason,
        "served_model": served_model, "error": error, "finished_at": func.now(),
    }
    done = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
        .values(status=status.value, **values)
    ).rowcount
    if not done:  # cancelled while running: keep the late result, not the status
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.CANCELLED.value)
            .values(**values)
        )
    return bool(done)


def fail_unpublished(conn: Connection, job_ids: Sequence[uuid.UUID], error: str) -> None:
    """Jobs whose message could not be published: failed, with the reason."""
    conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(list(job_ids)), jobs.c.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.FAILED.value, error=error, finished_at=func.now())
    )


def requeue_job(conn: Connection, job_id: uuid.UUID, error: str) -> None:
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
        .values(status=JobStatus.QUEUED.value, error=error)
    )


def cancel_job(engine: Engine, job_id: uuid.UUID) -> str | None:
    """Cancel a job that is not finished; returns its status after the call (None: no job)."""
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(["queued", "running"]))
            .values(status=JobStatus.CANCELLED.value, finished_at=func.now())
        )
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
    return status


def get_jobs(engine: Engine, job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    ids = list(job_ids)
    with engine.connect() as conn:
        rows = conn.execute(select(jobs).where(jobs.c.id.in_(ids))).mappings().all()
    return {row["id"]: dict(row) for row in rows}


def unfinished(engine: Engine, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    terminal = [s.value for s in TERMINAL_STATUSES]
    with engine.connect() as conn:
        rows = conn.execute(
            select(jobs.c.id).where(jobs.c.id.in_(job_ids), jobs.c.status.not_in(terminal))
        ).scalars()
        return set(rows)


def now() -> datetime:
    return datetime.now(UTC)
