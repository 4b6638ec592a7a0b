"""Fencing: which provider result may move a job on, and when a worker must stop a call.

Every start of a job bumps its generation (``jobs.attempts``); the attempt that started it
carries that number. A worker can lose its lease without knowing it (a network partition:
it cannot reach Postgres to renew, the reaper elsewhere re-queues the job, another worker
runs it again). When its stalled call finally answers, its result is late: recorded, with
its tokens and cost because the provider billed them, but as ``superseded``: it never
changes the job's status or response and never counts as a success. ``farm.store.attempts``
runs this rule in SQL (``RECORD_SQL``); the integration tests check both agree.

The other half: a worker that has gone ``abandon_share`` of the lease without a successful
renewal abandons the job's call (closes its connection) before the lease can run out, so
that a re-run elsewhere does not overlap a zombie call. Pure decision here; the watchdog
thread (``farm.reliability.watchdog``) acts on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from farm.jobs import JobStatus

K = TypeVar("K")

SUPERSEDED = "superseded"  # attempts.outcome of a late result

# a result of the job's current generation moves it on from these; a cancelled job keeps
# its status but its current result is still recorded (the cancel came during the call)
MOVABLE = (JobStatus.RUNNING, JobStatus.QUEUED)
OPEN = (*MOVABLE, JobStatus.CANCELLED)


class Verdict(StrEnum):
    CURRENT = "current"
    SUPERSEDED = SUPERSEDED


def verdict(status: JobStatus, generation: int, attempt: int) -> Verdict:
    """A result of ``attempt`` for a job now at ``generation`` in ``status``: current only
    if no later start happened (same generation) and the job is not finished."""
    if attempt == generation and status in OPEN:
        return Verdict.CURRENT
    return Verdict.SUPERSEDED


def next_status(status: JobStatus, found: Verdict, intended: JobStatus) -> JobStatus:
    """The job's status after recording a result that leads to ``intended``."""
    if found is Verdict.CURRENT and status in MOVABLE:
        return intended
    return status


@dataclass(frozen=True)
class Held:
    """One job a worker process runs: the generation it started, the thread calling for
    it, and when (monotonic) its lease was last known to be held."""

    generation: int
    thread: int
    held_at: float


def to_abandon(held: Mapping[K, Held], now: float, *, lease_s: float,
               abandon_share: float, lost: Iterable[K] = ()) -> list[K]:
    """The jobs whose calls must stop now: those known lost (a renewal found another
    generation, or the job finished elsewhere) and those without a renewal for
    ``abandon_share`` of the lease (their lease may run out before the next one)."""
    gone = set(lost)
    limit = lease_s * abandon_share
    return [job for job, h in held.items() if job in gone or now - h.held_at >= limit]
