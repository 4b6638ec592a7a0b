"""Leases on running jobs, so that a job whose worker died runs again within a minute.

Redis only gives an unacknowledged message back after its visibility timeout (an hour
here, which must outlast the longest job): far too late for a job whose worker was killed.
So every running job holds a lease in Postgres (``jobs.lease_until``). A thread in each
worker process renews the leases of the jobs that process runs; a reaper thread in each
worker re-queues jobs whose lease ran out and publishes them again, and re-publishes jobs
whose message a dead worker had taken but not started. A later
second copy of a message is harmless: ``store.start_job`` only starts a job that is queued
or whose lease ran out.

Postgres, not Redis, is the record of what must run. A message can vanish from Redis: kombu
pops it and then records it as unacknowledged in a second round trip (a worker killed, or
Redis restarted, between the two loses it), a Redis restart loses the last second of
writes, a submitter can die between inserting its rows and publishing. So one worker of the
cluster at a time (a Redis lock) sweeps for orphans: jobs queued in Postgres (never
started for a while, or due a while ago: a retry, a hold, a deferral, a re-queue) whose
message is in no queue list and not held by any worker; it publishes them again. A job that
merely waits behind a backlog is in a list, so it is not published twice.
"""

from __future__ import annotations

import json
import logging
import re
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
    """Re-queue and re-publish jobs whose lease ran out or whose message died unstarted with
    its worker."""
    taken = long_reserved(broker, grace_s) if broker is not None else []
    with engine.begin() as conn:
        lost = conn.execute(REAP_SQL, {"limit": limit, "grace_s": grace_s}).all()
        unstarted = (conn.execute(UNSTARTED_SQL, {"ids": taken, "grace_s": grace_s}).all()
                     if taken else [])
    for row in (*lost, *unstarted):
        republish(row.id, row.queue, row.priority)
    if lost or unstarted:
        log.warning("re-published %d job(s) of lost workers, %d taken but never started",
                    len(lost), len(unstarted))
    return len(lost) + len(unstarted)


ORPHAN_CANDIDATES_SQL = text(
    """
    SELECT id, queue FROM jobs
    WHERE status = 'queued'
      AND ((next_run_at IS NULL AND created_at < now() - make_interval(secs => :age_s))
           OR next_run_at < now() - make_interval(secs => :grace_s))
    ORDER BY created_at LIMIT :limit
    """
)
ORPHANS_SQL = text(
    """
    UPDATE jobs SET next_run_at = now() + make_interval(secs => :grace_s)
    WHERE id = ANY(:ids) AND status = 'queued'
      AND (next_run_at IS NULL OR next_run_at < now() - make_interval(secs => :grace_s))
    RETURNING id, queue, priority
    """
)
SWEEP_LOCK = "farm:orphan-sweep"
# a message's id as kombu's JSON has it (headers.id and properties.correlation_id)
_MESSAGE_ID = re.compile(rb'"(?:id|correlation_id)": "([0-9a-f-]{36})"')


def queue_keys(queue: str, priority_steps: tuple[int, ...] = (0, 3, 6),
               sep: str = ":") -> list[str]:
    """The Redis lists that hold a queue's messages: one per priority step."""
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in priority_steps]


def ids_in_redis(broker: Any, queues: set[str], *, scan_max: int,
                 chunk: int = 1000) -> set[uuid.UUID] | None:
    """The job ids of every message in these queues' lists and in the unacknowledged hash,
    or None when the lists hold more than scan_max messages (too many to scan this round).
    The lists are read before the hash: a message moving from one to the other is seen in
    at least one of them, unless it is inside kombu's two-step pop at that moment (then it
    is taken for lost and published again, which is harmless)."""
    keys = [key for queue in sorted(queues) for key in queue_keys(queue)]
    pipe = broker.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    lengths = pipe.execute()
    if sum(lengths) > scan_max:
        return None
    found: set[uuid.UUID] = set()
    for key, length in zip(keys, lengths, strict=True):
        for start in range(0, length, chunk):
            for raw in broker.lrange(key, start, start + chunk - 1):
                found.update(uuid.UUID(m.decode()) for m in _MESSAGE_ID.findall(raw))
    for raw in broker.hvals("unacked"):
        found.update(uuid.UUID(m.decode()) for m in _MESSAGE_ID.findall(raw))
    return found


def sweep_orphans(engine: Engine, broker: Any, republish: Republish, *, age_s: float,
                  grace_s: float, scan_max: int = 50_000, limit: int = 5000) -> int:
    """Publish again the jobs queued in Postgres whose message is nowhere in Redis: never
    started after age_s, or due more than grace_s ago."""
    with engine.connect() as conn:
        rows = conn.execute(ORPHAN_CANDIDATES_SQL,
                            {"age_s": age_s, "grace_s": grace_s, "limit": limit}).all()
    if not rows:
        return 0
    candidates = {row.id for row in rows}
    present = ids_in_redis(broker, {row.queue for row in rows}, scan_max=scan_max)
    if present is None:
        log.info("orphan sweep skipped: more than %d messages queued", scan_max)
        return 0
    orphans = list(candidates - present)
    if not orphans:
        return 0
    with engine.begin() as conn:
        rows = conn.execute(ORPHANS_SQL, {"ids": orphans, "grace_s": grace_s}).all()
    for row in rows:
        republish(row.id, row.queue, row.priority)
    if rows:
        log.warning("re-published %d queued job(s) whose message was lost from Redis",
                    len(rows))
    return len(rows)


def sweep_if_due(engine: Engine, broker: Any, republish: Republish, *, every_s: float,
                 age_s: float, grace_s: float) -> int:
    """Sweep for orphans unless another worker of the cluster did in the last every_s."""
    if not broker.set(SWEEP_LOCK, "1", nx=True, px=max(1, int(every_s * 1000))):
        return 0
    return sweep_orphans(engine, broker, republish, age_s=age_s, grace_s=grace_s)


def start_threads(engine: Engine, running: Running, republish: Republish, *, lease_s: float,
                  reaper_interval_s: float, stop: threading.Event, broker: Any = None,
                  orphan_sweep_s: float = 30.0, orphan_age_s: float = 60.0,
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
        *([loop("orphan-sweep", min(reaper_interval_s, orphan_sweep_s),
                lambda: sweep_if_due(engine, broker, republish, every_s=orphan_sweep_s,
                                     age_s=orphan_age_s, grace_s=lease_s))]
          if broker is not None else []),
    ]
