"""The /livez and /readyz HTTP endpoints of one worker process, for orchestrators
(Kubernetes probes, a load balancer's health check): 200 ``ok`` or 503 with the reason, as
plain text. Served on the first free port of [``base``, ``base`` + ``SPAN``) (the several
worker processes of a host, all given FARM_HEALTH_PORT, each get one; the port is in the
process's heartbeat and `farm workers`)."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from farm.pool.health import Verdict

log = logging.getLogger("farm.pool")

SPAN = 64
PATHS = ("/livez", "/readyz")


class NoFreePort(RuntimeError):
    pass


@dataclass(frozen=True)
class ProbeServer:
    host: str
    port: int
    server: ThreadingHTTPServer

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(checks: dict[str, Callable[[], Verdict]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            check = checks.get(self.path.split("?", 1)[0])
            if check is None:
                self._send(404, f"no such endpoint; try {' or '.join(PATHS)}")
                return
            try:
                verdict = check()
            except Exception as exc:  # a failing check is a failed probe, never a crash
                verdict = Verdict(False, f"check failed: {type(exc).__name__}")
            self._send(200 if verdict.ok else 503, verdict.reason)

        def _send(self, status: int, body: str) -> None:
            data = (body + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
            return

    return Handler


def serve(live: Callable[[], Verdict], ready: Callable[[], Verdict], host: str, base: int,
          span: int = SPAN) -> ProbeServer:
    """Serve the probes on the first free port from ``base``; NoFreePort if none is."""
    handler = _handler({"/livez": live, "/readyz": ready})
    for port in range(base, base + span):
        try:
            server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="farm-probes", daemon=True).start()
        served = ProbeServer(host, port, server)
        log.warning("health probes on %s and /readyz", served.url("/livez"))
        return served
    raise NoFreePort(f"no free port for the health probes in [{base}, {base + span - 1}] "
                     f"on {host}")
