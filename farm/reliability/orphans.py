"""The orphan sweep: Postgres, not Redis, is the record of what must run.

A message can vanish from Redis: kombu pops it and then records it as unacknowledged in a
second round trip (a worker killed, or Redis restarted, between the two loses it), a Redis
restart loses the last second of writes, a submitter can die between inserting its rows and
publishing. So one worker of the cluster at a time (a Redis lock) sweeps for orphans: jobs
queued in Postgres (never started for a while, or due a while ago: a retry, a hold, a
deferral, a re-queue) whose message is in no queue list and not held by any worker; it
publishes them again. A job that merely waits behind a backlog is in a list, so it is not
published twice. A job waiting for a Message Batch (``batched``) has no message to lose: the
batch collector (farm.batches) takes it from Postgres.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from farm.broker import layout
from farm.reliability.leases import REPUBLISH_QUEUED_SQL, Republish
from farm.reliability.strays import rescue_strays
from farm.store.db import Database

log = logging.getLogger("farm.orphans")

CANDIDATES_SQL = """
    SELECT id, queue FROM jobs
    WHERE status = 'queued' AND NOT batched
      AND ((next_run_at IS NULL AND created_at < now() - make_interval(secs => %(age_s)s))
           OR next_run_at < now() - make_interval(secs => %(grace_s)s))
    ORDER BY created_at LIMIT %(limit)s
"""
SWEEP_LOCK = "farm:orphan-sweep"


def sweep_orphans(db: Database, broker: Any, republish: Republish, *, age_s: float,
                  grace_s: float, scan_max: int = 50_000, limit: int = 5000) -> int:
    """Publish again the jobs queued in Postgres whose message is nowhere in Redis: never
    started after age_s, or due more than grace_s ago."""
    with db.connect() as conn:
        rows = conn.execute(CANDIDATES_SQL,
                            {"age_s": age_s, "grace_s": grace_s, "limit": limit}).fetchall()
    if not rows:
        return 0
    candidates = {row.id for row in rows}
    present = layout.ids_in_redis(broker, {row.queue for row in rows}, scan_max=scan_max)
    if present is None:
        log.info("orphan sweep skipped: more than %d messages queued", scan_max)
        return 0
    orphans = list(candidates - present)
    if not orphans:
        return 0
    with db.connect() as conn:
        rows = conn.execute(REPUBLISH_QUEUED_SQL,
                            {"ids": orphans, "grace_s": grace_s}).fetchall()
    for row in rows:
        republish(row.id, row.queue, row.priority)
    if rows:
        log.warning("re-published %d queued job(s) whose message was lost from Redis",
                    len(rows))
    return len(rows)


def take_turn(broker: Any, every_s: float) -> bool:
    """Whether this worker sweeps now: no other worker of the cluster did in the last
    every_s (a Redis lock that expires)."""
    return bool(broker.set(SWEEP_LOCK, "1", nx=True, px=max(1, int(every_s * 1000))))


def sweep_if_due(db: Database, broker: Any, republish: Republish, *, every_s: float,
                 age_s: float, grace_s: float, consumed: Sequence[str] | None = None) -> int:
    """Sweep for orphans unless another worker of the cluster did in the last every_s; with
    ``consumed`` (the farm's queues), for strays too (farm.reliability.strays). Returns the
    orphans published again."""
    if not take_turn(broker, every_s):
        return 0
    found = sweep_orphans(db, broker, republish, age_s=age_s, grace_s=grace_s)
    if consumed is not None:
        rescue_strays(broker, consumed)
    return found
