"""The /metrics HTTP server of one worker process: the first free port of
[``base``, ``base`` + ``SPAN``), so that the several worker processes of a host, all given
the same FARM_METRICS_PORT, each get one. Prometheus finds them by scraping the range (or
reads each process's port from its pool heartbeat, ``farm.observe.heartbeat``)."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("farm.metrics")

SPAN = 64


class NoFreePort(RuntimeError):
    pass


@dataclass(frozen=True)
class MetricsServer:
    host: str
    port: int
    server: WSGIServer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, host: str, base: int, span: int = SPAN
          ) -> MetricsServer:
    """Serve ``registry`` on the first free port from ``base``; NoFreePort if none is."""
    for port in range(base, base + span):
        try:
            server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        served = MetricsServer(host, port, server)
        log.warning("metrics on %s", served.url)
        return served
    raise NoFreePort(f"no free port for the metrics in [{base}, {base + span - 1}] on {host}")
