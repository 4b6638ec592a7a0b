"""Leases on running jobs, so that a job whose worker died runs again within a minute.

Redis only gives an unacknowledged message back after its visibility timeout (an hour
here, which must outlast the longest job): far too late for a job whose worker was killed.
So every running job holds a lease in Postgres (``jobs.lease_until``). A thread in each
worker process renews the leases of the jobs that process runs; a reaper thread in each
worker re-queues jobs whose lease ran out and publishes them again, and re-publishes jobs
whose message a dead worker had taken but not started. A later second copy of a message is
harmless: ``farm.store.jobs.start_job`` only starts a job that is queued or whose lease ran
out. Jobs whose message vanished from Redis altogether are the orphan sweep's
(``farm.reliability.orphans``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.broker import layout

log = logging.getLogger("farm.leases")

RENEW_SQL = text(
    "UPDATE jobs SET lease_until = now() + make_interval(secs => :lease_s) "
    "WHERE id = ANY(:ids) AND status = 'running'"
)
# SKIP LOCKED: several reapers (one per worker) never fight over a row
# next_run_at is set so that, should this worker die before publishing, the orphan sweep
# publishes the job again
REAP_SQL = text(
    """
    UPDATE jobs SET status = 'queued', lease_until = NULL,
                    next_run_at = now() + make_interval(secs => :grace_s),
                    error = 'lease expired: its worker was lost; re-queued'
    WHERE id IN (SELECT id FROM jobs
                 WHERE status = 'running' AND lease_until < now()
                 ORDER BY lease_until LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id, queue, priority
    """
)
# queued jobs whose message is gone (a dead worker took it and never started it, or Redis
# lost it): they are due again now, and the stamp keeps two loops from publishing them twice
REPUBLISH_QUEUED_SQL = text(
    """
    UPDATE jobs SET next_run_at = now() + make_interval(secs => :grace_s)
    WHERE id = ANY(:ids) AND status = 'queued'
      AND (next_run_at IS NULL OR next_run_at < now() - make_interval(secs => :grace_s))
    RETURNING id, queue, priority
    """
)

class Running:
    """The jobs this process is running (thread-safe)."""

    def __init__(self) -> None:
        self._ids: set[uuid.UUID] = set()
        self._lock = threading.Lock()

    def add(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def snapshot(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._ids)


def renew(engine: Engine, ids: list[uuid.UUID], lease_s: float) -> int:
    if not ids:
        return 0
    with engine.begin() as conn:
        return int(conn.execute(RENEW_SQL, {"ids": ids, "lease_s": lease_s}).rowcount)


def hand_back(engine: Engine, ids: list[uuid.UUID]) -> int:
    """End the leases of jobs this process gives up (a shutdown past its grace): the reaper
    of any live worker re-queues and publishes them again."""
    if not ids:
        return 0
    with engine.begin() as conn:
        return int(conn.execute(text(
            "UPDATE jobs SET lease_until = now() - interval '1 second' "
            "WHERE id = ANY(:ids) AND status = 'running'"), {"ids": ids}).rowcount)


Republish = Callable[[uuid.UUID, str, str], None]  # (job id, queue, priority)


def reap(engine: Engine, republish: Republish, *, grace_s: float, broker: Any = None,
         limit: int = 500) -> int:
    """Re-queue and re-publish jobs whose lease ran out or whose message died unstarted with
    its worker."""
    taken = layout.long_reserved(broker, grace_s) if broker is not None else []
    with engine.begin() as conn:
        lost = conn.execute(REAP_SQL, {"limit": limit, "grace_s": grace_s}).all()
        unstarted = (conn.execute(REPUBLISH_QUEUED_SQL, {"ids": taken, "grace_s": grace_s}).all()
                     if taken else [])
    for row in (*lost, *unstarted):
        republish(row.id, row.queue, row.priority)
    if lost or unstarted:
        log.warning("re-published %d job(s) of lost workers, %d taken but never started",
                    len(lost), len(unstarted))
    return len(lost) + len(unstarted)
