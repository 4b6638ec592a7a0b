"""Submitting a batch job: its row is recorded like any job's (queued), then marked
``batched`` in the same transaction, and its message is never published: the batch
collector (farm.batches.collector) takes it from Postgres. Used by the Python API
(farm.client) and by the intake of jobs sent inline (farm.worker.intake)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from farm.batches.policy import wants_batch
from farm.jobs import JobRequest, Route
from farm.settings import Settings

WAITING = "waiting for a Message Batch"  # the wait_reason of a job until its batch goes

MARK_SQL = text(
    "UPDATE jobs SET batched = true, wait_reason = :reason "
    "WHERE id = ANY(:ids) AND status = 'queued'"
)


def batching(routed: Sequence[tuple[uuid.UUID, tuple[JobRequest, Route]]], settings: Settings,
             now: datetime | None = None) -> set[uuid.UUID]:
    """The ids of the jobs that wait for a Message Batch (farm.batches.policy.wants_batch,
    with their queue's policy and FARM_BATCH_DEADLINE_S)."""
    at = now or datetime.now(UTC)
    queues = {q.name: q.batch for q in settings.queues}
    return {job_id for job_id, (request, route) in routed
            if wants_batch(request, queues.get(route.queue), at, settings.batch_deadline_s)}


def row_fields(job_id: uuid.UUID, request: JobRequest, route: Route,
               settings: Settings) -> dict[str, object]:
    """What a job's new row gains when the job waits for a batch (nothing otherwise)."""
    if not batching([(job_id, (request, route))], settings):
        return {}
    return {"batched": True, "wait_reason": WAITING}


def mark(conn: Connection, job_ids: Sequence[uuid.UUID] | set[uuid.UUID]) -> None:
    """In the transaction that recorded them: these queued jobs wait for a batch."""
    if job_ids:
        conn.execute(MARK_SQL, {"ids": list(job_ids), "reason": WAITING})


Routed = tuple[uuid.UUID, tuple[JobRequest, Route]]


def record(conn: Connection, routed: Sequence[Routed], settings: Settings) -> list[Routed]:
    """Mark the batch jobs among rows just recorded in this transaction; returns the others,
    the jobs to publish."""
    waiting = batching(routed, settings)
    mark(conn, waiting)
    return [job for job in routed if job[0] not in waiting]
