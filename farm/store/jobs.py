"""Job persistence: every read and write of `jobs` (SQLAlchemy Core; the hot path's two
statements as plain SQL). A call's attempt row and the job's move are
``farm.store.attempts``'s.

Writes are idempotent: a job starts only when queued or its lease ran out, and each start
bumps its generation (``attempts``), which fences the results (``farm.reliability.fencing``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import TextClause, func, insert, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from farm.jobs import JobRequest, JobStatus, Route
from farm.reliability.idempotency import keyed_hash
from farm.store.schema import jobs

log = logging.getLogger("farm.store")


@dataclass(frozen=True)
class StartedJob:
    id: uuid.UUID
    request: JobRequest
    queue: str
    model: str
    attempt: int
    created_at: datetime | None = None
    spent: Decimal = Decimal(0)  # what its calls so far cost (unknown costs as 0)
    # routing at the worker (farm.worker.reroute): a second opinion to ask first; the
    # simple model it escalated from; the attempts spent routing it (not counted against
    # its retry policy or as deliveries)
    second_opinion: bool = False
    escalated_from: str | None = None
    routing_calls: int = 0

    @property
    def deliveries(self) -> int:
        """Its attempts but those spent routing it (a second opinion, an escalated answer)."""
        return self.attempt - self.routing_calls


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
        "route_score": route.score,
        "second_opinion": route.second_opinion,
        # a keyed row goes in through farm.store.keyed (the unique index decides)
        "idempotency_key": request.idempotency_key,
        "request_hash": keyed_hash(request),
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
# A batch job (farm.batches) never runs from a message: its batch carries its call.
# The status test is a CASE so that the planner finds the row by its primary key: a plain
# `status = 'queued' OR ...` matches the partial index ix_jobs_active, whose statistics say
# "empty" after an idle spell, and a start then filtered every pending job for its one id
# (4,000 queued: 3 ms of Postgres CPU a start; tests/integration/test_start_plan.py).
START_SQL = """
    UPDATE jobs
    SET status = 'running', attempts = attempts + 1, started_at = coalesce(started_at, now()),
        lease_until = now() + make_interval(secs => %(lease_s)s), next_run_at = NULL,
        wait_reason = NULL
    WHERE id = %(job_id)s AND NOT batched
      AND CASE status WHEN 'queued' THEN true WHEN 'running' THEN lease_until < now()
                      ELSE false END
    RETURNING request, queue, model, attempts, created_at, coalesce(cost_usd, 0),
              second_opinion, escalated_from, routing_calls
"""


def status_in(*statuses: str) -> str:
    """SQL for ``status IN statuses`` as a CASE, for a statement on one job's id: the planner
    then finds the row by its primary key, never by ix_jobs_active (see START_SQL)."""
    listed = ", ".join(f"'{status}'" for status in statuses)
    return f"CASE WHEN status IN ({listed}) THEN true ELSE false END"


def status_is(*statuses: str) -> TextClause:
    """status_in as a clause for SQLAlchemy statements on ``jobs``."""
    return text(status_in(*statuses))


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


def fetch_one(engine: Engine, sql: str, params: dict[str, Any],
               patience_s: float) -> tuple[Any, ...] | None:
    """Run one idempotent statement, riding out a Postgres outage of up to patience_s: the
    caller keeps what it has (a provider result, say) and nothing is called twice."""
    deadline = time.monotonic() + patience_s
    delay = 0.2
    while True:
        try:
            return _fetch_one_now(engine, sql, params)
        # TimeoutError: no pool connection free in time, every one stuck on the outage too
        except (psycopg.OperationalError, sa_exc.OperationalError, sa_exc.TimeoutError) as exc:
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
    row = fetch_one(engine, START_SQL, {"job_id": job_id, "lease_s": lease_s}, patience_s)
    if row is None:
        return None
    request, queue, model, attempt, created_at, spent, opinion, escalated_from, routing = row
    return StartedJob(
        id=job_id, request=JobRequest.model_validate(request), queue=queue, model=model,
        attempt=attempt, created_at=created_at, spent=Decimal(spent),
        second_opinion=opinion, escalated_from=escalated_from, routing_calls=routing,
    )


UNSTART_SQL = f"""
    UPDATE jobs
    SET status = 'queued', attempts = attempts - 1, lease_until = NULL,
        started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
        next_run_at = now() + make_interval(secs => %(wait_s)s), wait_reason = %(reason)s
    WHERE id = %(job_id)s AND {status_in("running")} AND attempts = %(attempt)s
    RETURNING id
"""


def unstart(engine: Engine, job: StartedJob, wait_s: float, reason: str, *,
            patience_s: float = 0.0) -> None:
    """Put a started job back to queued without a call (it must wait: capacity, an open
    circuit, a paused queue): the attempt it was counted is given back, and it is due again
    in wait_s; ``reason`` is what `farm status` says meanwhile."""
    fetch_one(engine, UNSTART_SQL, {"job_id": job.id, "attempt": job.attempt,
                                     "wait_s": wait_s, "reason": reason[:500]}, patience_s)


DEFER_SQL = f"""
    UPDATE jobs SET next_run_at = now() + make_interval(secs => :s), wait_reason = :reason
    WHERE id = :id AND {status_in("queued")}
"""


def defer(engine: Engine, job_id: uuid.UUID, seconds: float, reason: str) -> None:
    """A queued job that will be looked at again in `seconds` (its message is delayed);
    ``reason`` is what `farm status` says meanwhile."""
    with engine.begin() as conn:
        conn.execute(text(DEFER_SQL), {"id": job_id, "s": seconds, "reason": reason[:500]})


HELD = "held: "  # wait_reason of a job held by the farm-wide hold


def paused(queue: str) -> str:
    """The wait_reason of a job whose queue is paused."""
    return f"queue {queue} is paused"


LIMITS = ("rpm", "itpm", "otpm", "concurrency", "tenant-concurrency")  # what a throttle cuts


def limited(model: str, limit: str, over_share: bool = False) -> str:
    """The wait_reason of a job waiting for one of its model's limits (LIMITS) or pause;
    ``over_share``: its tenant is over its fair share (farm.capacity.limits)."""
    return f"{model}: {limit}" + (" (tenant over its fair share)" if over_share else "")


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


def kill_job(engine: Engine, job_id: uuid.UUID, error: str, *, uncount: bool = False) -> None:
    """End a running job as dead without a provider call (a poison message; with
    ``uncount``, a job stopped before its call: the attempt its start counted is given
    back)."""
    values: dict[str, Any] = {"status": JobStatus.DEAD.value, "error": error,
                              "finished_at": func.now(), "lease_until": None}
    if uncount:
        values["attempts"] = jobs.c.attempts - 1
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, status_is(JobStatus.RUNNING.value))
            .values(**values)
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
            .where(jobs.c.id == job_id, status_is("queued", "running"))
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
