"""Stray messages: farm jobs sent to a queue no farm worker consumes.

A service that sends ``farm.run_job`` with plain Celery and forgets the queue publishes to
Celery's default queue (``celery``), or to any queue it names; no farm worker listens
there, and the job has no row in Postgres yet, so nothing else would ever notice it. The
worker that runs the cluster's sweep (farm.reliability.loops) looks at every other Redis
list, and moves the farm's messages it finds there to the intake queue, where they are
validated, recorded and routed like any inline job; it logs each move. Other applications'
messages in those lists are left alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from farm.broker.layout import INTAKE_QUEUE, RUN_JOB_TASK, queue_keys

log = logging.getLogger("farm.strays")

# move one item from a list to the intake list, only if it is still there (atomic)
MOVE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def is_farm_job(raw: bytes) -> bool:
    """Whether a Redis list item is a kombu message of the farm's run_job task."""
    try:
        headers = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return False
    return isinstance(headers, dict) and headers.get("task") == RUN_JOB_TASK


def rescue_strays(broker: Any, consumed: Iterable[str], *, scan_max: int = 10_000) -> int:
    """Move the farm's messages out of every Redis list that is not a consumed queue's into
    the intake queue; returns how many were moved. Lists longer than ``scan_max`` are read
    only that far this round."""
    known = {key for queue in consumed for key in queue_keys(queue)}
    move = broker.register_script(MOVE)
    intake = queue_keys(INTAKE_QUEUE)[0]
    moved = 0
    for raw_key in broker.scan_iter(count=1000, _type="list"):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        if key in known:
            continue
        found = [item for item in broker.lrange(key, 0, scan_max - 1) if is_farm_job(item)]
        here = sum(int(move(keys=[key, intake], args=[item])) for item in found)
        if here:
            log.warning("moved %d farm.run_job message(s) from queue %r, which no farm worker "
                        "consumes, to %s", here, key, INTAKE_QUEUE)
        moved += here
    return moved
