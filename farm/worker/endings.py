"""What every way a delivery ends tells others: the dead-letter row and message of a dead
job, and the ``job_finished`` event of a job this delivery ended. Used by the tasks
(farm.worker.tasks) and the inline intake (farm.worker.intake)."""

from __future__ import annotations

import uuid

from celery import Celery, Task

from farm.broker.layout import DEAD_LETTER_TASK
from farm.jobs import JobStatus
from farm.reliability import dlq
from farm.store import jobs as store
from farm.worker import events
from farm.worker import runtime as rt


def dead(task: Task, runtime: rt.Runtime, job_id: uuid.UUID, queue: str, error_class: str,
         message: str) -> None:
    """Dead-letter a job: its DLQ row (once), then a message on its queue's dead-letter
    destination (the retry policy's `dead_letter_queue`)."""
    dead_letter(task.app, runtime, job_id, queue, error_class, message)


def dead_letter(app: Celery, runtime: rt.Runtime, job_id: uuid.UUID, queue: str,
                error_class: str, message: str) -> None:
    """``dead`` outside a task (the batch loop, farm.batches): the message goes out on
    ``app``."""
    if dlq.record(runtime.db, job_id, error_class, message):
        announce_dead(app, runtime, job_id, queue, error_class)


def announce_dead(app: Celery, runtime: rt.Runtime, job_id: uuid.UUID, queue: str,
                  error_class: str) -> None:
    """What follows a job's new DLQ row: the job_dead event and the dead-letter message."""
    events.job_dead.send(None, queue=queue, error_class=error_class)
    app.send_task(DEAD_LETTER_TASK, queue=runtime.policy(queue).dead_letter_queue,
                  kwargs={"job_id": str(job_id), "error_class": error_class})


def finished(job: store.StartedJob, model: str, status: str) -> None:
    """This delivery ended the job (``status`` is final): tell the listeners."""
    if status in FINAL:
        created = job.created_at
        events.job_finished.send(
            None, queue=job.queue, model=model, outcome=status,
            duration_s=None if created is None else (store.now() - created).total_seconds())


FINAL = frozenset(s.value for s in JobStatus if s.terminal)
