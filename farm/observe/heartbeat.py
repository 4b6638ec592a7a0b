"""The pool heartbeat of a worker process, in Redis, for the exporter and `farm top`.

Every ``EVERY_S`` seconds each worker process writes ``HSET farm:pool:<hostname>:<pid>``:
one field per queue it consumes, ``"<slots> <busy>"`` (its concurrency, and the jobs of
that queue it is running now), and ``metrics_port`` (the port of its /metrics, absent when
they are off); the key expires after ``TTL_S`` seconds, so a dead process drops out on its
own, and a clean shutdown deletes it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("farm.metrics")

PREFIX = "farm:pool:"
EVERY_S = 5.0
TTL_S = 30
METRICS_PORT = "metrics_port"


def key(hostname: str | None = None, pid: int | None = None) -> str:
    return f"{PREFIX}{hostname or socket.gethostname()}:{pid or os.getpid()}"


def fields(pool: Mapping[str, tuple[int, int]], metrics_port: int | None) -> dict[str, str]:
    """The hash's fields: ``queue -> "slots busy"``, and the metrics port if any."""
    found = {queue: f"{slots} {busy}" for queue, (slots, busy) in pool.items()}
    if metrics_port is not None:
        found[METRICS_PORT] = str(metrics_port)
    return found


def parse(raw: Mapping[Any, Any]) -> tuple[dict[str, tuple[int, int]], int | None]:
    """A heartbeat's hash read back: (queue -> (slots, busy), metrics port or None); a field
    that does not parse is left out (another writer's, or a newer farm's)."""
    pool: dict[str, tuple[int, int]] = {}
    port: int | None = None
    for name, value in raw.items():
        name = name.decode() if isinstance(name, bytes) else str(name)
        value = value.decode() if isinstance(value, bytes) else str(value)
        try:
            if name == METRICS_PORT:
                port = int(value)
            else:
                slots, busy = value.split()
                pool[name] = (int(slots), int(busy))
        except ValueError:
            continue
    return pool, port


class Heartbeat:
    """Beats for one process until ``stop()`` (which deletes its key)."""

    def __init__(self, client: Any, pool: Callable[[], Mapping[str, tuple[int, int]]],
                 metrics_port: int | None, *, name: str | None = None,
                 every_s: float = EVERY_S) -> None:
        self.client, self.pool, self.metrics_port = client, pool, metrics_port
        self.key = name or key()
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        pipe = self.client.pipeline()
        pipe.delete(self.key)  # a queue no longer served must not linger
        pipe.hset(self.key, mapping=fields(self.pool(), self.metrics_port))
        pipe.expire(self.key, TTL_S)
        pipe.execute()

    def start(self) -> Heartbeat:
        def run() -> None:
            while True:
                try:
                    self.beat()
                except Exception as exc:  # Redis away: beat again next round
                    log.warning("pool heartbeat failed: %s", type(exc).__name__)
                if self._stop.wait(self.every_s):
                    return

        self._thread = threading.Thread(target=run, name="farm-pool-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.client.delete(self.key)
        except Exception as exc:
            log.warning("pool heartbeat not deleted: %s", type(exc).__name__)
