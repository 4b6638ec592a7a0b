"""A queue of its own on the farm's Redis transport (farm.broker.transport), for the tests
that drive kombu's channel directly (importable: tests/ is on sys.path via rootdir conftest)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis
from kombu import Connection, Exchange, Producer, Queue

from farm.broker import transport


class KombuQueue(NamedTuple):
    """A connection on the farm's transport, a channel of it, and a queue of its own."""

    conn: Connection
    chan: Any
    queue: Queue

    def publish(self, n: int) -> None:
        """Messages ``{"n": 0}`` .. ``{"n": n - 1}`` on the queue, in that order."""
        producer = Producer(self.chan)
        for i in range(n):
            producer.publish({"n": i}, exchange=self.queue.exchange,
                             routing_key=self.queue.routing_key, declare=[self.queue])


@contextmanager
def kombu_queue(broker_url: str) -> Iterator[KombuQueue]:
    """A KombuQueue on ``broker_url``; afterwards its channel is closed (which restores what
    a test left unacknowledged to the list), then the list deleted."""
    transport.register()
    name = f"kombu-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(broker_url) as conn:
        chan = conn.channel()
        assert isinstance(chan, transport.Channel)
        try:
            yield KombuQueue(conn, chan, queue)
        finally:
            chan.close()
            with redis.Redis.from_url(broker_url) as client:
                client.delete(name)
