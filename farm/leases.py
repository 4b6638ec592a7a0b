"""Leases on running jobs, so that a job whose worker died runs again within a minute.

Redis only gives an unacknowledged message back after its visibility timeout (an hour
here, which must outlast the longest job): far too late for a job whose worker was killed.
So every running job holds a lease in Postgres (``jobs.lease_until``). A thread in each
worker process renews the leases of the jobs that process runs; a reaper thread in each
worker re-queues jobs whose lease ran out and publishes them again, and re-publishes
retries whose delayed message is long overdue (it was held by a worker that died). A later
second copy of a message is harmless: ``store.start_job`` only starts a job that is queued
or whose lease ran out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger("farm.leases")

RENEW_SQL = text(
    "UPDATE jobs SET lease_until = now() + make_interval(secs => :lease_s) "
    "WHERE id = ANY(:ids) AND status = 'running'"
)
# SKIP LOCKED: several reapers (one per worker) never fight over a row
REAP_SQL = text(
    """
    UPDATE jobs SET status = 'queued', lease_until = NULL, next_run_at = NULL,
                    error = 'lease expired: its worker was lost; re-queued'
    WHERE id IN (SELECT id FROM jobs
                 WHERE status = 'running' AND lease_until < now()
                 ORDER BY lease_until LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id, queue, priority
    """
)
# jobs whose message a worker took but never started: its holder died (a live worker starts
# what it reserves at once, prefetch being one per slot)
UNSTARTED_SQL = text(
    """
    UPDATE jobs SET next_run_at = now() + make_interval(secs => :grace_s)
    WHERE id = ANY(:ids) AND status = 'queued'
      AND (next_run_at IS NULL OR next_run_at < now() - make_interval(secs => :grace_s))
    RETURNING id, queue, priority
    """
)
OVERDUE_SQL = text(
    """
    UPDATE jobs SET next_run_at = now() + make_interval(secs => :grace_s)
    WHERE id IN (SELECT id FROM jobs
                 WHERE status = 'queued' AND next_run_at < now() - make_interval(secs => :grace_s)
                 LIMIT :limit FOR UPDATE SKIP LOCKED)
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


Republish = Callable[[uuid.UUID, str, str], None]  # (job id, queue, priority)


def long_reserved(broker: Any, older_than_s: float, *, window_s: float = 3600.0,
                  limit: int = 5000) -> list[uuid.UUID]:
    """Job ids of farm messages a worker took from a queue more than older_than_s (and less
    than window_s, the visibility timeout) ago and has not acknowledged: kombu keeps them in
    the ``unacked`` hash and the ``unacked_index`` sorted set."""
    now = time.time()
    tags = broker.zrangebyscore("unacked_index", now - window_s, now - older_than_s,
                                start=0, num=limit)
    ids = []
    for raw in broker.hmget("unacked", tags) if tags else ():
        try:
            headers = json.loads(raw)[0]["headers"]
            if headers.get("task") == "farm.run_job":
                ids.append(uuid.UUID(str(headers["id"])))
        except (TypeError, ValueError, KeyError, IndexError):
            continue
    return ids


def reap(engine: Engine, republish: Republish, *, grace_s: float, broker: Any = None,
         limit: int = 500) -> int:
    """Re-queue and re-publish jobs whose lease ran out, whose message died unstarted with
    its worker, or whose retry is long overdue."""
    taken = long_reserved(broker, grace_s) if broker is not None else []
    with engine.begin() as conn:
        lost = conn.execute(REAP_SQL, {"limit": limit}).all()
        unstarted = (conn.execute(UNSTARTED_SQL, {"ids": taken, "grace_s": grace_s}).all()
                     if taken else [])
        overdue = conn.execute(OVERDUE_SQL, {"limit": limit, "grace_s": grace_s}).all()
    for row in (*lost, *unstarted, *overdue):
        republish(row.id, row.queue, row.priority)
    if lost or unstarted or overdue:
        log.warning("re-published %d job(s) of lost workers, %d taken but never started, "
                    "%d overdue retr(y/ies)", len(lost), len(unstarted), len(overdue))
    return len(lost) + len(unstarted) + len(overdue)


def start_threads(engine: Engine, running: Running, republish: Republish, *, lease_s: float,
                  reaper_interval_s: float, stop: threading.Event, broker: Any = None,
                  ) -> list[threading.Thread]:
    """The renewal and reaper loops of one worker process (daemon threads)."""

    def loop(name: str, interval: float, step: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            while not stop.wait(interval):
                try:
                    step()
                except Exception as exc:  # a DB outage: try again next round
                    log.warning("%s failed: %s", name, type(exc).__name__)

        thread = threading.Thread(target=run, name=f"farm-{name}", daemon=True)
        thread.start()
        return thread

    return [
        loop("lease-renewal", lease_s / 4, lambda: renew(engine, running.snapshot(), lease_s)),
        loop("reaper", reaper_interval_s,
             lambda: reap(engine, republish, grace_s=lease_s, broker=broker)),
    ]
