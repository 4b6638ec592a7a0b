"""A worker process's observation, started from its lifecycle (farm.worker.lifecycle):
the pool heartbeat always, and with FARM_METRICS_PORT its metrics (collectors hung on the
worker's signals) and their /metrics server. ``close()`` stops it all at shutdown."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import redis

from farm.observe.heartbeat import Heartbeat
from farm.observe.metrics import WorkerMetrics
from farm.observe.server import MetricsServer, NoFreePort, serve
from farm.services import resolve_urls
from farm.settings import Settings

log = logging.getLogger("farm.metrics")


@dataclass(frozen=True)
class Observing:
    heartbeat: Heartbeat
    metrics: WorkerMetrics | None
    server: MetricsServer | None

    def close(self) -> None:
        self.heartbeat.stop()
        self.heartbeat.client.close()
        if self.metrics is not None:
            self.metrics.disconnect()
        if self.server is not None:
            self.server.close()


def pool_view(queues: Sequence[str], slots: Callable[[], int],
              busy: Callable[[], Mapping[str, int]]) -> Callable[[], dict[str, tuple[int, int]]]:
    """queue -> (slots, busy): every slot of the process (its elastic slots now) serves each
    queue it consumes."""
    def view() -> dict[str, tuple[int, int]]:
        running, now = busy(), slots()
        return {queue: (now, running.get(queue, 0)) for queue in queues}

    return view


def start(settings: Settings, queues: Sequence[str], slots: Callable[[], int],
          busy: Callable[[], Mapping[str, int]],
          info: Callable[[], Mapping[str, str]] | None = None) -> Observing:
    """``info``: the pool's own heartbeat fields (farm.pool.process.ProcessPool.info)."""
    pool = pool_view(queues, slots, busy)
    metrics: WorkerMetrics | None = None
    server: MetricsServer | None = None
    if settings.metrics_port:
        metrics = WorkerMetrics(pool).connect()
        try:
            server = serve(metrics.registry, settings.metrics_host, settings.metrics_port)
        except NoFreePort as exc:  # the worker runs on, without metrics
            log.error("metrics off: %s", exc)
            metrics.disconnect()
            metrics = None
    # bounded waits: a Redis out of reach must not hang the worker's shutdown (the delete)
    client = redis.Redis.from_url(resolve_urls(settings).broker_url, socket_timeout=5,
                                  socket_connect_timeout=5)
    heartbeat = Heartbeat(client, pool, None if server is None else server.port,
                          info=info).start()
    return Observing(heartbeat, metrics, server)
