"""Submitting a batch job: its row is recorded like any job's (queued), with
``batched`` set and why it waits, and its message is never published: the batch
collector (farm.batches.collector) takes it from Postgres. Used by the Python API
(farm.client) and by the intake of jobs sent inline (farm.worker.intake)."""

from __future__ import annotations

from farm.costs.admit import batched
from farm.jobs import JobRequest, Route
from farm.settings import Settings

WAITING = "waiting for a Message Batch"  # the wait_reason of a job until its batch goes


def row_fields(request: JobRequest, route: Route, settings: Settings) -> dict[str, object]:
    """The batch columns of a job's new row: ``batched``, and for a job that waits for a
    Message Batch (farm.costs.admit.batched: its own choice, its queue's policy, a far
    deadline) why it waits. The same keys for every job, so that rows insert together."""
    waits = batched(request, route, settings)
    return {"batched": waits, "wait_reason": WAITING if waits else None}
