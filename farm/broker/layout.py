"""Names on the wire and kombu's Redis layout, declared once.

Celery's configuration (celeryconfig.py), the publisher (farm.app), the worker and the
reliability loops (farm.reliability) all read their queue names, priority steps and keys
from here; the functions below are the only code that reads kombu's keys directly.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from kombu.entity import Exchange, Queue

from farm.jobs import Priority

RUN_JOB_TASK = "farm.run_job"
DEAD_LETTER_TASK = "farm.dead_letter"
# jobs sent with plain send_task that could not be routed at the sender go here; workers on
# it validate, record and route them
INTAKE_QUEUE = "farm-intake"
DEAD_LETTER_QUEUE = "dead-letter"
EXCHANGE = "farm"

# kombu emulates priorities on Redis with one list per step; 0 is served first
PRIORITY_STEPS = (0, 3, 6)
SEP = ":"
CELERY_PRIORITY = {Priority.HIGH: 0, Priority.NORMAL: 3, Priority.LOW: 6}
DEFAULT_PRIORITY = CELERY_PRIORITY[Priority.NORMAL]
# kombu's record of messages a worker took and has not acknowledged
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
# longer than the longest job (request timeout) plus its longest backoff
VISIBILITY_TIMEOUT_S = 3600

# a message's id as kombu's JSON has it (headers.id and properties.correlation_id)
_MESSAGE_ID = re.compile(rb'"(?:id|correlation_id)": "([0-9a-f-]{36})"')


def celery_priority(priority: Priority) -> int:
    """The Celery/Redis priority of a job's priority: 0 is served first."""
    return CELERY_PRIORITY[priority]


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a queue's messages: one per priority step."""
    return [queue if step == 0 else f"{queue}{SEP}{step}" for step in PRIORITY_STEPS]


def long_reserved(broker: Any, older_than_s: float, *, window_s: float = VISIBILITY_TIMEOUT_S,
                  limit: int = 5000) -> list[uuid.UUID]:
    """Job ids of farm messages a worker took from a queue more than older_than_s (and less
    than window_s, the visibility timeout) ago and has not acknowledged: kombu keeps them in
    the ``unacked`` hash and the ``unacked_index`` sorted set."""
    now = time.time()
    tags = broker.zrangebyscore(UNACKED_INDEX, now - window_s, now - older_than_s,
                                start=0, num=limit)
    ids = []
    for raw in broker.hmget(UNACKED, tags) if tags else ():
        try:
            headers = json.loads(raw)[0]["headers"]
            if headers.get("task") == RUN_JOB_TASK:
                ids.append(uuid.UUID(str(headers["id"])))
        except (TypeError, ValueError, KeyError, IndexError):
            continue
    return ids


def list_lengths(broker: Any, keys: list[str]) -> list[int]:
    """The lengths of these Redis lists (queue keys: ``queue_keys``), in one round trip."""
    pipe = broker.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    return [int(n) for n in pipe.execute()] if keys else []


def ids_in_redis(broker: Any, queues: set[str], *, scan_max: int,
                 chunk: int = 1000) -> set[uuid.UUID] | None:
    """The job ids of every message in these queues' lists and in the unacknowledged hash,
    or None when the lists hold more than scan_max messages (too many to scan this round).
    The lists are read before the hash: a message moving from one to the other is seen in
    at least one of them, unless it is inside kombu's two-step pop at that moment (then it
    is taken for lost and published again, which is harmless)."""
    keys = [key for queue in sorted(queues) for key in queue_keys(queue)]
    lengths = list_lengths(broker, keys)
    if sum(lengths) > scan_max:
        return None
    found: set[uuid.UUID] = set()
    for key, length in zip(keys, lengths, strict=True):
        for start in range(0, length, chunk):
            for raw in broker.lrange(key, start, start + chunk - 1):
                found.update(uuid.UUID(m.decode()) for m in _MESSAGE_ID.findall(raw))
    for raw in broker.hvals(UNACKED):
        found.update(uuid.UUID(m.decode()) for m in _MESSAGE_ID.findall(raw))
    return found


def declare_queues(specialization: tuple[str, ...]) -> list[Queue]:
    """Every queue of the farm on its one direct exchange, each bound by its own name: the
    specialization queues, the intake queue and the dead-letter queue."""
    exchange = Exchange(EXCHANGE, type="direct")
    names = dict.fromkeys((*specialization, INTAKE_QUEUE, DEAD_LETTER_QUEUE))
    return [Queue(name, exchange, routing_key=name) for name in names]
