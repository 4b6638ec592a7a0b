"""What a worker holds and what waits for it, sampled in Redis during a bench run.

A worker's consumer takes messages from the queue's lists and records each in kombu's
``unacked`` hash until it is acknowledged; the hash's length is what the worker holds (taken,
not finished), the lists' length what waits for it. With a backlog waiting and the worker
holding far fewer than its prefetch allows, its consumer, not its slots, is the limit: it
takes messages no faster than its jobs finish.

Each sample is one pipelined read (LLEN of every list of the queue, HLEN of the hash); the
bench takes one a second, beside its own completion polls.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from kombu.transport import redis as kombu_redis

from farm.broker.layout import UNACKED


def plain_keys(queue: str) -> list[str]:
    """The lists of a plain Celery queue on Redis: kombu's default priority steps and
    separator, as its Redis channel names them (farm queues: farm.broker.layout.queue_keys)."""
    channel = kombu_redis.Channel
    return [f"{queue}{channel.sep}{step}" if step else queue for step in channel.priority_steps]


@dataclass
class Backlog:
    client: Any  # redis.Redis on the broker
    keys: list[str]
    samples: list[tuple[int, int]] = field(default_factory=list)  # (waiting, held)

    def sample(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.llen(key)
        pipe.hlen(UNACKED)
        *lengths, held = pipe.execute()
        self.samples.append((sum(lengths), int(held)))

    def under(self, floor: int) -> tuple[float, float] | None:
        """(waiting, held), the medians of the samples with at least ``floor`` waiting; None
        when no sample had."""
        rows = [s for s in self.samples if s[0] >= floor]
        if not rows:
            return None
        return (statistics.median(w for w, _ in rows), statistics.median(h for _, h in rows))
