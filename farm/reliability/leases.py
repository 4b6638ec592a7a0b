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
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from farm.broker import layout
from farm.reliability.fencing import Held
from farm.store.db import Database, scalars

log = logging.getLogger("farm.leases")

# only leases still ours: the same generation (no later start), not finished meanwhile (a
# cancelled job's call may finish: its result is still recorded)
RENEW_SQL = """
    UPDATE jobs SET lease_until = now() + make_interval(secs => %(lease_s)s)
    FROM unnest(CAST(%(ids)s AS uuid[]), CAST(%(gens)s AS int[])) AS held(id, generation)
    WHERE jobs.id = held.id AND jobs.attempts = held.generation
      AND jobs.status IN ('running', 'cancelled')
    RETURNING jobs.id
"""
# SKIP LOCKED: several reapers (one per worker) never fight over a row
# next_run_at is set so that, should this worker die before publishing, the orphan sweep
# publishes the job again
REAP_SQL = """
    UPDATE jobs SET status = 'queued', lease_until = NULL,
                    next_run_at = now() + make_interval(secs => %(grace_s)s),
                    error = 'lease expired: its worker was lost; re-queued'
    WHERE id IN (SELECT id FROM jobs
                 WHERE status = 'running' AND lease_until < now()
                 ORDER BY lease_until LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING id, queue, priority
"""
# queued jobs whose message is gone (a dead worker took it and never started it, or Redis
# lost it): they are due again now, and the stamp keeps two loops from publishing them twice
REPUBLISH_QUEUED_SQL = """
    UPDATE jobs SET next_run_at = now() + make_interval(secs => %(grace_s)s)
    WHERE id = ANY(CAST(%(ids)s AS uuid[])) AND status = 'queued'
      AND (next_run_at IS NULL OR next_run_at < now() - make_interval(secs => %(grace_s)s))
    RETURNING id, queue, priority
"""

class Running:
    """The jobs this process is running (thread-safe): each one's generation, the thread
    calling for it and when its lease was last known held; the calls the watchdog stopped.
    ``abort(thread)`` stops a thread's call, ``clear(thread)`` re-arms the thread when its
    job is over and ``sent(thread)`` tells if its call went out (``farm.provider.abort.Calls``).
    """

    def __init__(self, *, abort: Callable[[int], object] = lambda thread: None,
                 clear: Callable[[int], object] = lambda thread: None,
                 sent: Callable[[int], bool] = lambda thread: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[uuid.UUID, Held] = {}
        self._queues: dict[uuid.UUID, str] = {}
        self._lost: set[uuid.UUID] = set()
        self._abandoned: set[uuid.UUID] = set()
        self._abort, self._clear, self._sent, self.clock = abort, clear, sent, clock
        self._lock = threading.Lock()

    def add(self, job_id: uuid.UUID, generation: int = 0, queue: str = "") -> None:
        """The calling thread runs ``job_id`` (of ``queue``), whose lease (``generation``)
        it just took."""
        with self._lock:
            self._held[job_id] = Held(generation, threading.get_ident(), self.clock())
            self._queues[job_id] = queue

    def discard(self, job_id: uuid.UUID) -> None:
        with self._lock:
            held = self._held.pop(job_id, None)
            self._queues.pop(job_id, None)
            self._lost.discard(job_id)
            self._abandoned.discard(job_id)
            if held is not None:
                self._clear(held.thread)

    def snapshot(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._held)

    def per_queue(self) -> dict[str, int]:
        """How many jobs of each queue this process runs now (the pool's busy slots)."""
        with self._lock:
            counts: dict[str, int] = {}
            for queue in self._queues.values():
                counts[queue] = counts.get(queue, 0) + 1
            return counts

    def held(self) -> dict[uuid.UUID, Held]:
        with self._lock:
            return dict(self._held)

    def lost(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self._lost)

    def renewed(self, asked: dict[uuid.UUID, Held], kept: set[uuid.UUID], at: float) -> None:
        """A renewal of ``asked`` (started at ``at``) kept these leases; the others are lost
        (the job was started again elsewhere, or finished)."""
        with self._lock:
            for job_id, held in asked.items():
                now = self._held.get(job_id)
                if now is None or now.generation != held.generation:
                    continue  # over, or started again by this process meanwhile
                if job_id in kept:
                    self._held[job_id] = replace(now, held_at=max(now.held_at, at))
                else:
                    self._lost.add(job_id)

    def abandon(self, job_id: uuid.UUID) -> bool:
        """Stop the job's call (once); False if it is no longer run here or already was."""
        with self._lock:
            held = self._held.get(job_id)
            if held is None or job_id in self._abandoned:
                return False
            self._abandoned.add(job_id)
            self._abort(held.thread)
            return True

    def abandoned(self, job_id: uuid.UUID) -> bool:
        with self._lock:
            return job_id in self._abandoned

    def sent(self, job_id: uuid.UUID) -> bool:
        """Whether the job's call went out (an abandoned call that did not cost nothing)."""
        with self._lock:
            held = self._held.get(job_id)
            return held is not None and self._sent(held.thread)


def renew(db: Database, running: Running, lease_s: float) -> int:
    """Renew the leases of the jobs ``running`` holds; note the ones found lost."""
    asked = running.held()
    if not asked:
        return 0
    at = running.clock()
    ids = list(asked)
    with db.connect() as conn:
        kept = set(scalars(conn.execute(RENEW_SQL, {"ids": ids, "gens": [asked[i].generation
                                                                         for i in ids],
                                                    "lease_s": lease_s})))
    running.renewed(asked, kept, at)
    return len(kept)


def hand_back(db: Database, ids: list[uuid.UUID]) -> int:
    """End the leases of jobs this process gives up (a shutdown past its grace): the reaper
    of any live worker re-queues and publishes them again."""
    if not ids:
        return 0
    with db.connect() as conn:
        return int(conn.execute(
            "UPDATE jobs SET lease_until = now() - interval '1 second' "
            "WHERE id = ANY(CAST(%(ids)s AS uuid[])) AND status = 'running'",
            {"ids": ids}).rowcount)


Republish = Callable[[uuid.UUID, str, str], None]  # (job id, queue, priority)


def reap(db: Database, republish: Republish, *, grace_s: float, broker: Any = None,
         limit: int = 500) -> int:
    """Re-queue and re-publish jobs whose lease ran out or whose message died unstarted with
    its worker."""
    taken = layout.long_reserved(broker, grace_s) if broker is not None else []
    with db.connect() as conn:
        lost = conn.execute(REAP_SQL, {"limit": limit, "grace_s": grace_s}).fetchall()
        unstarted = (conn.execute(REPUBLISH_QUEUED_SQL,
                                  {"ids": taken, "grace_s": grace_s}).fetchall()
                     if taken else [])
    for row in (*lost, *unstarted):
        republish(row.id, row.queue, row.priority)
    if lost or unstarted:
        log.warning("re-published %d job(s) of lost workers, %d taken but never started",
                    len(lost), len(unstarted))
    return len(lost) + len(unstarted)
