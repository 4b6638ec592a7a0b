"""The intake of a job sent inline with plain ``send_task``: validate, route (with the
second-opinion band), record its row; an invalid job is recorded as failed and
dead-lettered; while the database cannot take the row, the message comes back later. A job
whose idempotency key another job holds is that job (farm.store.keyed): it is not run again;
under a different request it is refused."""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

import psycopg
from celery import Task
from celery.exceptions import Retry

from farm.batches import submit as batch_submit
from farm.broker.layout import INTAKE_QUEUE
from farm.costs.admit import check_cost_cap
from farm.jobs import describe_problems
from farm.reliability import dlq
from farm.reliability.idempotency import IdempotencyConflictError
from farm.routing.route import parse_and_route
from farm.store import jobs as store
from farm.store import keyed
from farm.worker import runtime as rt
from farm.worker.endings import announce_dead

log = logging.getLogger("farm.tasks")

# An intake write that fails on the data (Postgres cannot store it) fails the job; one that
# fails on the database (down, overloaded, not migrated) is tried again later
# (a PoolTimeout, no connection free in time, is an OperationalError: the database's)
_UNSTORABLE = (psycopg.DataError, psycopg.IntegrityError)
_DATABASE_ERRORS = (psycopg.Error,)


def db_error(exc: BaseException) -> str:
    """A database error by its kind and SQLSTATE only: its text can quote the data (the
    server's DETAIL and CONTEXT lines do), so it is never logged or recorded."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None)
    return type(orig).__name__ + (f" (SQLSTATE {code})" if code else "")


def intake(
    task: Task,
    runtime: rt.Runtime,
    job_id: uuid.UUID,
    request: dict[str, Any] | None,
    unexpected: dict[str, Any],
    delivery_info: dict[str, Any] | None,
) -> uuid.UUID | None:
    """A job sent inline with plain send_task: validate, route, record the row. Returns the
    job to run: ``job_id``, or the job already holding its idempotency key with the same
    request (this one is a duplicate: nothing is recorded for it). None when the job is
    invalid, its key is held with a different request, or it cannot be stored (recorded as
    failed and dead-lettered). While the database cannot take the row, the message comes
    back later, request and all."""
    queue = (delivery_info or {}).get("routing_key") or INTAKE_QUEUE
    settings = runtime.settings
    try:
        if unexpected:
            raise ValueError(f"unexpected task arguments: {', '.join(sorted(unexpected))}")
        job_request, chosen = parse_and_route(request, settings.queues,
                                              band=settings.router_second_opinion)
        check_cost_cap(job_request, chosen, settings, runtime.prices)
    except ValueError as exc:  # a pydantic ValidationError is a ValueError too
        _refuse(task, runtime, job_id, request, queue, f"invalid job: {describe_problems(exc)}")
        return None
    row = store.new_job_row(job_id, job_request, chosen)
    row.update(batch_submit.row_fields(job_request, chosen, settings))
    if row.get("batched"):  # recorded unpublished: the batch collector takes it from there
        log.info("job %s waits for a Message Batch", job_id)
    try:
        with runtime.db.connect() as conn:
            if row["idempotency_key"] is None:
                store.insert_job_once(conn, row)
                return job_id
            return keyed.insert_keyed(conn, row)  # a message delivered again: its own row
    except IdempotencyConflictError as exc:
        reason = f"invalid job: {exc}"
    except _UNSTORABLE as exc:
        reason = f"the job could not be stored: {db_error(exc)}"
    except _DATABASE_ERRORS as exc:
        _intake_later(task, runtime, job_id, exc)
    _refuse(task, runtime, job_id, request, queue, reason)
    return None


def duplicate(runtime: rt.Runtime, job_id: uuid.UUID, holder: uuid.UUID) -> dict[str, Any]:
    """The result of a message whose job is another's (its idempotency key is held, with the
    same request): it names the holder and its status; nothing runs, the message is
    acknowledged."""
    row = store.get_jobs(runtime.db, [holder], columns=("id", "status")).get(holder)
    status = None if row is None else str(row["status"])
    log.info("job %s: its idempotency key is held by job %s (%s), sent with the same "
             "request: not run again", job_id, holder, status)
    return {"job_id": str(holder), "status": status, "duplicate_of": str(holder)}


def _refuse(task: Task, runtime: rt.Runtime, job_id: uuid.UUID, raw: Any, queue: str,
            reason: str) -> None:
    """Record an inline job that cannot run as failed, with the reason, and dead-letter it:
    the job's row and its DLQ row in one transaction (no one sees it failed and not in the
    DLQ). Its request is kept as sent if Postgres can store it, else left out."""
    reason = reason.replace("\x00", "\\x00")  # a field name can hold one (a metadata key)

    def refused(request: Any) -> bool:
        with runtime.db.begin() as conn:
            store.insert_failed_job(conn, job_id, request, queue, reason)
            return dlq.record_on(conn, job_id, "invalid", reason)

    try:
        try:
            fresh = refused(raw)
        except _UNSTORABLE as exc:
            fresh = refused({"not_stored": db_error(exc)})
        if fresh:
            announce_dead(task.app, runtime, job_id, queue, "invalid")
    except _DATABASE_ERRORS as exc:
        _intake_later(task, runtime, job_id, exc)


def _intake_later(task: Task, runtime: rt.Runtime, job_id: uuid.UUID,
                  exc: BaseException) -> NoReturn:
    """The database cannot take an inline job now: its message (the request in it: there is
    no row yet to run it from) comes back after a growing delay, for as long as it takes."""
    delay = min(runtime.settings.defer_max_s, 2.0 ** min(task.request.retries, 10))
    log.warning("job %s: the database cannot record the inline job (%s); it comes back in "
                "%.0fs", job_id, db_error(exc), delay)
    try:
        task.retry(countdown=delay)  # no exc=: its text would travel with the retry
    except Retry as again:
        raise again from None  # nor as the retry's context (its traceback goes to Flower)
    raise AssertionError("Task.retry returned")
