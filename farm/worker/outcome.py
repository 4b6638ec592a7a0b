"""How one delivery of a job ends as Celery and Flower see it: pure, from the job's status.

Postgres is the record of a job (jobs, attempts, dead_letters); a task's state is what the
operators watching Flower see, so it follows the job's status after the delivery:

- ``succeeded``: the task returns (SUCCESS), a repeated delivery of a succeeded job too;
- ``failed`` or ``dead``, or a message with no job behind it: the task raises
  :class:`JobFailed` (FAILURE, counted as failed). It is one of the task's ``throws``, so
  Celery logs it at INFO without a traceback, acknowledges the message
  (``task_acks_on_failure_or_timeout``, on by default) and does not retry it;
- ``cancelled``: REVOKED, as Celery shows a task it was told not to run (the worker sends
  ``task-revoked`` and the task ends with ``Ignore``: acknowledged, nothing more reported);
- ``queued`` or ``running``: another delivery has the job (a live lease elsewhere) and will
  report its end; this one ends with ``Ignore`` and reports nothing.

A retry or a deferral is not an ending: the task raises Celery's Retry (RETRY).
"""

from __future__ import annotations

from enum import Enum

from farm.jobs import JobStatus

# the status and error class of a message that names no job the farm knows
DROPPED = "dropped"
MALFORMED = "malformed_message"
UNKNOWN_JOB = "unknown_job"


class JobFailed(Exception):
    """A delivery left its job failed or dead (or its message named no job). It says the
    job id, the status and the error class, and nothing else: never the prompt, never the
    provider's message (which could echo it)."""

    def __init__(self, job_id: str, status: str, error_class: str) -> None:
        # the args are what Celery's events, logs and pickling carry: plain strings
        self.job_id, self.status, self.error_class = str(job_id), str(status), str(error_class)
        super().__init__(self.job_id, self.status, self.error_class)

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status}: {self.error_class}"


class Ending(Enum):
    SUCCESS = "success"  # the task returns
    FAILURE = "failure"  # the task raises JobFailed
    REVOKED = "revoked"  # task-revoked, then Ignore
    IGNORED = "ignored"  # Ignore: another delivery reports the job's end


def ending(status: str | None) -> Ending:
    """How a delivery ends that leaves its job in ``status`` (None: there is no such job)."""
    if status is None or status in (JobStatus.FAILED, JobStatus.DEAD):
        return Ending.FAILURE
    if status == JobStatus.SUCCEEDED:
        return Ending.SUCCESS
    if status == JobStatus.CANCELLED:
        return Ending.REVOKED
    return Ending.IGNORED
