"""Job persistence: every read and write of `jobs`, as plain SQL on the farm's psycopg
connections (``farm.store.db``). A call's attempt row and the job's move are
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
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from farm.jobs import JobRequest, JobStatus, Route
from farm.reliability.idempotency import keyed_hash
from farm.store.db import Database, dicts, scalars

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


# every column of `jobs`, in the schema's order (farm.store.schema; a test checks they agree):
# the names a caller may ask get_jobs and list_jobs for
JOB_COLUMNS = (
    "id", "status", "complexity", "queue", "model", "priority", "tenant", "route_reason",
    "request", "response_text", "stop_reason", "served_model", "input_tokens",
    "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd",
    "cost_unknown", "attempts", "error", "created_at", "started_at", "finished_at",
    "replay_of", "lease_until", "next_run_at", "wait_reason", "route_score", "second_opinion",
    "escalated_from", "routing_calls", "idempotency_key", "request_hash", "memo_key",
    "cache_hit", "saved_usd", "batched",
)
_DOCUMENTS = frozenset({"request"})  # JSONB columns: a dict goes in as Jsonb


def insert_sql(columns: Sequence[str], suffix: str = "") -> str:
    """``INSERT INTO jobs`` of these columns, one row of %(name)s parameters."""
    for name in columns:
        column(name)
    return (f"INSERT INTO jobs ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'%({name})s' for name in columns)}) {suffix}")


def row_params(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as statement parameters: its documents as JSONB."""
    return {name: Jsonb(value) if name in _DOCUMENTS and value is not None else value
            for name, value in row.items()}


def insert_jobs(conn: psycopg.Connection[Any], rows: Sequence[dict[str, Any]]) -> None:
    """New rows, all with the same columns (new_job_row's), in one pipelined executemany."""
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany(insert_sql(list(rows[0])), [row_params(r) for r in rows])


def insert_job_once(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    conn.execute(insert_sql(list(row), "ON CONFLICT (id) DO NOTHING"), row_params(row))


def insert_failed_job(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, raw: Any, queue: str, error: str
) -> None:
    """A message that carried an invalid job: record it as failed with the reason."""
    conn.execute(
        "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, request, "
        "error, finished_at) VALUES (%(id)s, %(status)s, 'unknown', %(queue)s, 'unknown', "
        "'normal', 'unknown', %(request)s, %(error)s, now()) ON CONFLICT (id) DO NOTHING",
        {"id": job_id, "status": JobStatus.FAILED.value, "queue": queue,
         "request": Jsonb(raw if isinstance(raw, dict) else {"raw": repr(raw)[:2000]}),
         "error": error[:4000]},
    )


def column(name: str) -> str:
    """The name, if ``jobs`` has such a column (no other name reaches a statement)."""
    if name not in JOB_COLUMNS:
        raise ValueError(f"jobs has no column {name!r}")
    return name


# The worker's two statements per job (start, record) are the hot path: each is one
# statement on a pooled connection, its row a plain tuple (fetch_one).
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


class DatabaseUnavailable(RuntimeError):
    """Postgres stayed unreachable for longer than the caller's patience."""


def _fetch_one_now(db: Database, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    # a connection that failed is closed, not given back to the pool (Database.connect)
    with db.connect() as conn, conn.cursor(row_factory=tuple_row) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def fetch_one(db: Database, sql: str, params: dict[str, Any],
               patience_s: float) -> tuple[Any, ...] | None:
    """Run one idempotent statement, riding out a Postgres outage of up to patience_s: the
    caller keeps what it has (a provider result, say) and nothing is called twice."""
    deadline = time.monotonic() + patience_s
    delay = 0.2
    while True:
        try:
            return _fetch_one_now(db, sql, params)
        # a PoolTimeout too: no pool connection free in time, every one stuck on the outage
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"Postgres unreachable for {patience_s:.0f}s: "
                                          f"{type(exc).__name__}") from None
            log.warning("Postgres unreachable (%s); retrying in %.1fs", type(exc).__name__,
                        delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def start_job(db: Database, job_id: uuid.UUID, *, lease_s: float = 60.0,
              patience_s: float = 0.0) -> StartedJob | None:
    """Mark the job running under a lease and count the attempt; None if it must not run."""
    row = fetch_one(db, START_SQL, {"job_id": job_id, "lease_s": lease_s}, patience_s)
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


def unstart(db: Database, job: StartedJob, wait_s: float, reason: str, *,
            patience_s: float = 0.0) -> None:
    """Put a started job back to queued without a call (it must wait: capacity, an open
    circuit, a paused queue): the attempt it was counted is given back, and it is due again
    in wait_s; ``reason`` is what `farm status` says meanwhile."""
    fetch_one(db, UNSTART_SQL, {"job_id": job.id, "attempt": job.attempt,
                                     "wait_s": wait_s, "reason": reason[:500]}, patience_s)


DEFER_SQL = f"""
    UPDATE jobs SET next_run_at = now() + make_interval(secs => %(s)s), wait_reason = %(reason)s
    WHERE id = %(id)s AND {status_in("queued")}
"""


def defer(db: Database, job_id: uuid.UUID, seconds: float, reason: str) -> None:
    """A queued job that will be looked at again in `seconds` (its message is delayed);
    ``reason`` is what `farm status` says meanwhile."""
    with db.connect() as conn:
        conn.execute(DEFER_SQL, {"id": job_id, "s": seconds, "reason": reason[:500]})


HELD = "held: "  # wait_reason of a job held by the farm-wide hold


def paused(queue: str) -> str:
    """The wait_reason of a job whose queue is paused."""
    return f"queue {queue} is paused"


LIMITS = ("rpm", "itpm", "otpm", "concurrency", "tenant-concurrency")  # what a throttle cuts


def limited(model: str, limit: str, over_share: bool = False) -> str:
    """The wait_reason of a job waiting for one of its model's limits (LIMITS) or pause;
    ``over_share``: its tenant is over its fair share (farm.capacity.limits)."""
    return f"{model}: {limit}" + (" (tenant over its fair share)" if over_share else "")


def wake(db: Database, reason: str, queue: str | None = None
         ) -> list[tuple[uuid.UUID, str, str]]:
    """Queued jobs waiting on a countdown for ``reason`` (its start: a hold, a paused
    queue), of one queue or all: due now, the reason cleared. Returns (id, queue, priority)
    of each, for their messages to be published again; their delayed messages still come
    later and find the job taken or finished. Jobs waiting for other reasons (a retry's
    backoff, capacity) keep waiting."""
    sql = ("UPDATE jobs SET next_run_at = now(), wait_reason = NULL WHERE status = 'queued' "
           "AND next_run_at > now() AND starts_with(wait_reason, %(reason)s)"
           + (" AND queue = %(queue)s" if queue is not None else "")
           + " RETURNING id, queue, priority")
    with db.connect() as conn:
        rows = conn.execute(sql, {"reason": reason, "queue": queue}).fetchall()
    return [(row.id, row.queue, row.priority) for row in rows]


KILL_SQL = f"""
    UPDATE jobs SET status = 'dead', error = %(error)s, finished_at = now(), lease_until = NULL,
                    attempts = attempts - %(uncount)s
    WHERE id = %(id)s AND {status_in("running")}
"""


def kill_job(db: Database, job_id: uuid.UUID, error: str, *, uncount: bool = False) -> None:
    """End a running job as dead without a provider call (a poison message; with
    ``uncount``, a job stopped before its call: the attempt its start counted is given
    back)."""
    with db.connect() as conn:
        conn.execute(KILL_SQL, {"id": job_id, "error": error, "uncount": int(uncount)})


def fail_unpublished(conn: psycopg.Connection[Any], job_ids: Sequence[uuid.UUID],
                     error: str) -> list[uuid.UUID]:
    """Jobs whose message may not have been published: failed, with the reason, unless a
    worker has taken one already (its message did arrive). Returns the ids failed, in the
    order given."""
    rows = conn.execute("UPDATE jobs SET status = 'failed', error = %(error)s, "
                        "finished_at = now() WHERE id = ANY(CAST(%(ids)s AS uuid[])) "
                        "AND status = 'queued' RETURNING id",
                        {"ids": list(job_ids), "error": error}).fetchall()
    done = {row[0] for row in rows}
    return [i for i in job_ids if i in done]


CANCEL_SQL = f"""
    UPDATE jobs SET status = 'cancelled', finished_at = now()
    WHERE id = %(id)s AND {status_in("queued", "running")}
    RETURNING id
"""


def cancel_job(db: Database, job_id: uuid.UUID) -> tuple[str, bool] | None:
    """Cancel a job that is not finished. Returns its status after the call and whether
    this call cancelled it (False: it had finished before); None when there is no job."""
    with db.begin() as conn:
        done = conn.execute(CANCEL_SQL, {"id": job_id}).fetchone()
        row = conn.execute("SELECT status FROM jobs WHERE id = %(id)s", {"id": job_id}).fetchone()
    return None if row is None else (row.status, done is not None)


def get_jobs(db: Database, job_ids: Iterable[uuid.UUID],
             columns: Sequence[str] | None = None) -> dict[uuid.UUID, dict[str, Any]]:
    """Rows by id (only `columns`, when given: the request, say, can be large). One array
    parameter, however many ids."""
    ids = list(job_ids)
    selected = ", ".join(column(name) for name in (columns or JOB_COLUMNS))
    sql = f"SELECT {selected} FROM jobs WHERE id = ANY(CAST(%(ids)s AS uuid[]))"
    with db.connect() as conn:
        return {row["id"]: row for row in dicts(conn, sql, {"ids": ids})}


def list_jobs(db: Database, columns: Sequence[str], *, tenant: str | None = None,
              statuses: Sequence[str] = (), queue: str | None = None,
              since: datetime | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Jobs newest first (created_at, then id), each filter applied when given; served by
    the created_at and (tenant, created_at) indexes."""
    where = [test for test, value in (
        ("tenant = %(tenant)s", tenant), ("status = ANY(%(statuses)s)", statuses or None),
        ("queue = %(queue)s", queue), ("created_at >= %(since)s", since)) if value is not None]
    sql = (f"SELECT {', '.join(column(name) for name in columns)} FROM jobs"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY created_at DESC, id DESC LIMIT %(limit)s")
    with db.connect() as conn:
        return dicts(conn, sql, {"tenant": tenant, "statuses": list(statuses), "queue": queue,
                                 "since": since, "limit": limit})


FINISHED_SQL = ("SELECT id FROM jobs WHERE id = ANY(CAST(%(ids)s AS uuid[])) "
                "AND status NOT IN ('queued', 'running')")


def unfinished(db: Database, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The jobs among `job_ids` not finished yet, including those with no row yet (a job
    sent inline with send_task gets its row when a worker takes it). One array parameter."""
    with db.connect() as conn:
        finished = set(scalars(conn.execute(FINISHED_SQL, {"ids": list(job_ids)})))
    return set(job_ids) - finished


def now() -> datetime:
    return datetime.now(UTC)
