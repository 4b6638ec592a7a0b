"""What the Python API returns and raises (farm.client re-exports all of it): a job as
stored, and the errors of submit, cancel and wait."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from farm.costs.money import ExactUsd
from farm.jobs import JobStatus


class InvalidJobError(ValueError):
    """One or more jobs failed validation; `problems` lists (job index, field, message)."""

    def __init__(self, problems: list[tuple[int, str, str]]) -> None:
        self.problems = problems
        lines = [f"job {i}: {field}: {msg}" for i, field, msg in problems]
        super().__init__("invalid job(s), nothing was enqueued:\n  " + "\n  ".join(lines))


class SubmitError(RuntimeError):
    """Publishing stopped part-way: `published` jobs are enqueued (the chunks before, and
    any job of the failed chunk a worker had taken already); the rest of that chunk
    (`failed`, their ids) is recorded as failed, never to run, and later chunks were never
    recorded. The message says all three."""

    def __init__(self, published: int, reason: str,
                 failed: Sequence[uuid.UUID] = ()) -> None:
        self.published, self.failed = published, list(failed)
        left = (f"; recorded as failed, not run: {', '.join(map(str, self.failed))}"
                if self.failed else "")
        super().__init__(f"{reason}; {published} job(s) were enqueued before it{left}")


class JobFinishedError(ValueError):
    """Farm.cancel(strict=True) on a job that had already finished: nothing was cancelled."""

    def __init__(self, job_id: uuid.UUID | str, status: JobStatus) -> None:
        self.status = status
        super().__init__(f"job {job_id} had already finished ({status.value}): "
                         "nothing to cancel")


class WaitTimeoutError(TimeoutError):
    """Farm.wait's timeout passed first; `pending` lists the jobs not finished, in the order
    they were given."""

    def __init__(self, pending: list[uuid.UUID], total: int, timeout: float) -> None:
        self.pending = pending
        super().__init__(f"{len(pending)} of {total} jobs not finished in {timeout}s")


class JobView(BaseModel):
    """A job as stored in Postgres."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    status: JobStatus
    queue: str
    model: str
    served_model: str | None
    complexity: str
    priority: str
    tenant: str
    response_text: str | None
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: ExactUsd | None  # None: no call yet, or a call on a model with no price row
    cost_unknown: bool  # a call ran on a model with no price row
    attempts: int
    error: str | None
    # a queued job waiting on a countdown: why, and when it is looked at again
    wait_reason: str | None = None
    next_run_at: datetime | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # routing: why this queue (with "; escalated: …" or "; second opinion: …" appended when
    # a worker moved the job), the classifier's score, a second opinion still to be asked,
    # the simple model the job escalated from
    route_reason: str | None = None
    route_score: float | None = None
    second_opinion: bool = False
    escalated_from: str | None = None
    cache_hit: bool = False  # answered from an identical earlier job's answer (farm.memo)
    saved_usd: ExactUsd | None = None  # that answer's cost, which this job did not pay
    batched: bool = False  # waits for, or ran in, a Message Batch (farm.batches)
    idempotency_key: str | None = None

    @property
    def done(self) -> bool:
        return self.status.terminal
