"""Job persistence: every read and write of `jobs` and `attempts` (SQLAlchemy Core).

Writes are idempotent: one attempt row per (job, attempt); the terminal status is written
once (``WHERE status = 'running'``), so a second delivery cannot bill or finish a job twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import psycopg
from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from farm.jobs import JobRequest, JobStatus, Route, Usage
from farm.store.schema import Attempt, Job

log = logging.getLogger("farm.store")
jobs = cast(Table, Job.__table__)
attempts = cast(Table, Attempt.__table__)


@dataclass(frozen=True)
class StartedJob:
    id: uuid.UUID
    request: JobRequest
    queue: str
    model: str
    attempt: int
    created_at: datetime | None = None


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


# The worker's two statements per job (start, record) are the hot path: they run as plain
# SQL on the DBAPI connection of the engine's pool, which costs about 0.15 ms of CPU less per
# statement than a SQLAlchemy execution (measured); everything else uses SQLAlchemy Core.
# A job runs when it is queued, or running under a lease that has run out (its worker
# died): a second copy of its message finds a live lease or a final status and is skipped.
START_SQL = """
    UPDATE jobs
    SET status = 'running', attempts = attempts + 1, started_at = coalesce(started_at, now()),
        lease_until = now() + make_interval(secs => %(lease_s)s), next_run_at = NULL,
        wait_reason = NULL
    WHERE id = %(job_id)s
      AND (status = 'queued' OR (status = 'running' AND lease_until < now()))
    RETURNING request, queue, model, attempts, created_at
"""


class DatabaseUnavailable(RuntimeError):
    """Postgres stayed unreachable for longer than the caller's patience."""


def _fetch_one_now(engine: Engine, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            row: tuple[Any, ...] | None = cursor.fetchone()
        finally:
            cursor.close()
        raw.commit()  # a no-op on the worker's autocommit engine
        return row
    except psycopg.OperationalError:
        raw.invalidate()  # a broken connection must not go back to the pool
        raise
    finally:
        raw.close()  # back to the pool (or discarded, when invalidated)


def _fetch_one(engine: Engine, sql: str, params: dict[str, Any],
               patience_s: float) -> tuple[Any, ...] | None:
    """Run one idempotent statement, riding out a Postgres outage of up to patience_s: the
    caller keeps what it has (a provider result, say) and nothing is called twice."""
    deadline = time.monotonic() + patience_s
    delay = 0.2
    while True:
        try:
            return _fetch_one_now(engine, sql, params)
        except (psycopg.OperationalError, sa_exc.OperationalError) as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"Postgres unreachable for {patience_s:.0f}s: "
                                          f"{type(exc).__name__}") from None
            log.warning("Postgres unreachable (%s); retrying in %.1fs", type(exc).__name__,
                        delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def start_job(engine: Engine, job_id: uuid.UUID, *, lease_s: float = 60.0,
              patience_s: float = 0.0) -> StartedJob | None:
    """Mark the job running under a lease and count the attempt; None if it must not run."""
    row = _fetch_one(engine, START_SQL, {"job_id": job_id, "lease_s": lease_s}, patience_s)
    if row is None:
        return None
    request, queue, model, attempt, created_at = row
    return StartedJob(
        id=job_id, request=JobRequest.model_validate(request), queue=queue, model=model,
        attempt=attempt, created_at=created_at,
    )


UNSTART_SQL = """
    UPDATE jobs
    SET status = 'queued', attempts = attempts - 1, lease_until = NULL,
        started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
        next_run_at = now() + make_interval(secs => %(wait_s)s), wait_reason = %(reason)s
    WHERE id = %(job_id)s AND status = 'running' AND attempts = %(attempt)s
    RETURNING id
"""


def unstart(engine: Engine, job: StartedJob, wait_s: float, reason: str, *,
            patience_s: float = 0.0) -> None:
    """Put a started job back to queued without a call (it must wait: capacity, an open
    circuit, a paused queue): the attempt it was counted is given back, and it is due again
    in wait_s; ``reason`` is what `farm status` says meanwhile."""
    _fetch_one(engine, UNSTART_SQL, {"job_id": job.id, "attempt": job.attempt,
                                     "wait_s": wait_s, "reason": reason[:500]}, patience_s)


@dataclass(frozen=True)
class Outcome:
    """One provider call's outcome and the job status it leads to."""

    status: JobStatus  # the job's next status: succeeded, failed, dead, or queued (retry)
    model: str
    outcome: str  # "ok" or an ErrorKind value
    started_at: datetime
    latency_s: float
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = Decimal(0)
    http_status: int | None = None
    error: str | None = None
    request_id: str | None = None
    response_text: str | None = None
    stop_reason: str | None = None
    retry_in_s: float | None = None  # with status queued: when the retry is due


# One statement, one round trip: insert the attempt once, then add it to the job's totals
# and move the job on. A second delivery of the same attempt inserts nothing and so changes
# nothing. A job cancelled meanwhile keeps its status; its late result is still recorded.
RECORD_SQL = """
    WITH ins AS (
        INSERT INTO attempts (job_id, attempt, queue, model, outcome, http_status, error,
            input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
            cost_usd, latency_ms, request_id, started_at, finished_at)
        VALUES (%(job_id)s, %(attempt)s, %(queue)s, %(model)s, %(outcome)s, %(http_status)s,
            %(error)s, %(input_tokens)s, %(output_tokens)s, %(cache_creation_input_tokens)s,
            %(cache_read_input_tokens)s, %(cost_usd)s, %(latency_ms)s, %(request_id)s,
            %(started_at)s, %(finished_at)s)
        ON CONFLICT (job_id, attempt) DO NOTHING
        RETURNING job_id, input_tokens, output_tokens, cache_creation_input_tokens,
                  cache_read_input_tokens, cost_usd
    )
    UPDATE jobs SET
        status = CASE WHEN jobs.status = 'running' THEN %(status)s ELSE jobs.status END,
        input_tokens = jobs.input_tokens + ins.input_tokens,
        output_tokens = jobs.output_tokens + ins.output_tokens,
        cache_creation_input_tokens =
            jobs.cache_creation_input_tokens + ins.cache_creation_input_tokens,
        cache_read_input_tokens = jobs.cache_read_input_tokens + ins.cache_read_input_tokens,
        cost_unknown = jobs.cost_unknown OR ins.cost_usd IS NULL,
        cost_usd = CASE WHEN jobs.cost_unknown OR ins.cost_usd IS NULL THEN NULL
                        ELSE coalesce(jobs.cost_usd, 0) + ins.cost_usd END,
        response_text = coalesce(%(response_text)s, jobs.response_text),
        stop_reason = coalesce(%(stop_reason)s, jobs.stop_reason),
        served_model = coalesce(%(served_model)s, jobs.served_model),
        error = CAST(%(job_error)s AS text),
        finished_at = CASE WHEN %(terminal)s THEN coalesce(jobs.finished_at, now())
                           ELSE jobs.finished_at END,
        lease_until = NULL,
        next_run_at = CASE WHEN %(retry_in_s)s::float8 IS NULL THEN NULL
                           ELSE now() + make_interval(secs => %(retry_in_s)s) END,
        wait_reason = CAST(%(wait_reason)s AS text)
    FROM ins
    WHERE jobs.id = ins.job_id
    RETURNING jobs.status
"""


def record_outcome(engine: Engine, job: StartedJob, outcome: Outcome, *,
                   patience_s: float = 0.0) -> str | None:
    """Record the attempt and move the job on; returns the job's status afterwards, or
    None when this attempt had been recorded already (nothing changed)."""
    usage = outcome.usage
    params = {
        "job_id": job.id, "attempt": job.attempt, "queue": job.queue, "model": outcome.model,
        "outcome": outcome.outcome, "http_status": outcome.http_status,
        "error": outcome.error, "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens, "cost_usd": outcome.cost,
        "latency_ms": round(outcome.latency_s * 1000), "request_id": outcome.request_id,
        "started_at": outcome.started_at,
        "finished_at": outcome.started_at + timedelta(seconds=outcome.latency_s),
        "status": outcome.status.value, "response_text": outcome.response_text,
        "stop_reason": outcome.stop_reason,
        "served_model": outcome.model if outcome.http_status == 200 else None,
        "job_error": outcome.error if outcome.status is not JobStatus.SUCCEEDED else None,
        "terminal": outcome.status.terminal,
        "retry_in_s": outcome.retry_in_s,
        "wait_reason": None if outcome.retry_in_s is None
        else f"retry after {outcome.outcome} (backoff)",
    }
    row = _fetch_one(engine, RECORD_SQL, params, patience_s)
    return None if row is None else str(row[0])


def defer(engine: Engine, job_id: uuid.UUID, seconds: float, reason: str) -> None:
    """A queued job that will be looked at again in `seconds` (its message is delayed);
    ``reason`` is what `farm status` says meanwhile."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET next_run_at = now() + make_interval(secs => :s), "
                 "wait_reason = :reason WHERE id = :id AND status = 'queued'"),
            {"id": job_id, "s": seconds, "reason": reason[:500]},
        )


HELD = "held: "  # wait_reason of a job held by the farm-wide hold


def paused(queue: str) -> str:
    """The wait_reason of a job whose queue is paused."""
    return f"queue {queue} is paused"


LIMITS = ("rpm", "itpm", "otpm", "concurrency", "tenant-concurrency")  # what a throttle cuts


def limited(model: str, limit: str) -> str:
    """The wait_reason of a job waiting for one of its model's limits (LIMITS) or pause."""
    return f"{model}: {limit}"


def wake(engine: Engine, reason: str, queue: str | None = None
         ) -> list[tuple[uuid.UUID, str, str]]:
    """Queued jobs waiting on a countdown for ``reason`` (its start: a hold, a paused
    queue), of one queue or all: due now, the reason cleared. Returns (id, queue, priority)
    of each, for their messages to be published again; their delayed messages still come
    later and find the job taken or finished. Jobs waiting for other reasons (a retry's
    backoff, capacity) keep waiting."""
    sql = ("UPDATE jobs SET next_run_at = now(), wait_reason = NULL WHERE status = 'queued' "
           "AND next_run_at > now() AND starts_with(wait_reason, :reason)"
           + (" AND queue = :queue" if queue is not None else "")
           + " RETURNING id, queue, priority")
    with engine.begin() as conn:
        rows = conn.execute(text(sql), {"reason": reason, "queue": queue}).all()
    return [(row.id, row.queue, row.priority) for row in rows]


def kill_job(engine: Engine, job_id: uuid.UUID, error: str) -> None:
    """End a running job as dead without a provider call (a poison message)."""
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
            .values(status=JobStatus.DEAD.value, error=error, finished_at=func.now(),
                    lease_until=None)
        )


def fail_unpublished(conn: Connection, job_ids: Sequence[uuid.UUID], error: str) -> None:
    """Jobs whose message could not be published: failed, with the reason."""
    conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(list(job_ids)), jobs.c.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.FAILED.value, error=error, finished_at=func.now())
    )


def cancel_job(engine: Engine, job_id: uuid.UUID) -> tuple[str, bool] | None:
    """Cancel a job that is not finished. Returns its status after the call and whether
    this call cancelled it (False: it had finished before); None when there is no job."""
    with engine.begin() as conn:
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(["queued", "running"]))
            .values(status=JobStatus.CANCELLED.value, finished_at=func.now())
            .returning(jobs.c.id)
        ).first()
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
    return None if status is None else (status, done is not None)


def get_jobs(engine: Engine, job_ids: Iterable[uuid.UUID],
             columns: Sequence[str] | None = None) -> dict[uuid.UUID, dict[str, Any]]:
    """Rows by id (only `columns`, when given: the request, say, can be large). One array
    parameter, however many ids."""
    ids = list(job_ids)
    chosen = [jobs.c[name] for name in columns] if columns else [jobs]
    with engine.connect() as conn:
        rows = conn.execute(select(*chosen).where(jobs.c.id == func.any(ids))).mappings().all()
    return {row["id"]: dict(row) for row in rows}


def list_jobs(engine: Engine, columns: Sequence[str], *, tenant: str | None = None,
              statuses: Sequence[str] = (), queue: str | None = None,
              since: datetime | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Jobs newest first (created_at, then id), each filter applied when given; served by
    the created_at and (tenant, created_at) indexes."""
    query = select(*[jobs.c[name] for name in columns])
    if tenant is not None:
        query = query.where(jobs.c.tenant == tenant)
    if statuses:
        query = query.where(jobs.c.status.in_(list(statuses)))
    if queue is not None:
        query = query.where(jobs.c.queue == queue)
    if since is not None:
        query = query.where(jobs.c.created_at >= since)
    query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


FINISHED_SQL = text(
    "SELECT id FROM jobs WHERE id = ANY(:ids) AND status NOT IN ('queued', 'running')"
)


def unfinished(engine: Engine, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The jobs among `job_ids` not finished yet, including those with no row yet (a job
    sent inline with send_task gets its row when a worker takes it). One array parameter."""
    with engine.connect() as conn:
        finished = set(conn.execute(FINISHED_SQL, {"ids": list(job_ids)}).scalars())
    return set(job_ids) - finished


def now() -> datetime:
    return datetime.now(UTC)
