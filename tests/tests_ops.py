"""A real Prometheus and Alertmanager for `make test-ops` (tests/ops): their binaries, their
temporary configurations, the processes, and an HTTP server standing in for Alertmanager's
webhook receiver. Free of the farm: the test says what to scrape and which rules to load."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests_e2e import stop, wait_until
from tests_support import free_port

# Debian names Alertmanager's binary prometheus-alertmanager
BINARIES = {"prometheus": ("prometheus",), "promtool": ("promtool",),
            "alertmanager": ("alertmanager", "prometheus-alertmanager")}


def binary(tool: str) -> str:
    """The path of a tool; AssertionError naming what to install when it is missing
    (`make test-ops` installs them)."""
    for name in BINARIES[tool]:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(f"{tool} is not installed: `make test-ops` installs it (Debian: "
                         "apt-get install prometheus prometheus-alertmanager)")


# --- Alertmanager's webhook receiver --------------------------------------------------

class Webhook:
    """Collects the JSON payloads Alertmanager POSTs (its webhook format: status, alerts
    with status, labels, annotations, startsAt, endsAt)."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self.payloads.append(payload)

    def alerts(self, name: str, status: str) -> list[dict[str, Any]]:
        """Every alert named ``name`` received with ``status`` (firing, resolved)."""
        with self._lock:
            return [a for p in self.payloads for a in p.get("alerts", [])
                    if a.get("labels", {}).get("alertname") == name
                    and a.get("status") == status]


@contextmanager
def webhook_server() -> Iterator[tuple[Webhook, str]]:
    """(the collected payloads, the URL to give Alertmanager)."""
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            hook.add(json.loads(self.rfile.read(size) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook, f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()


# --- the servers --------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    url: str
    log: Path


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    def missing() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"{log.stem} exited with status {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx2.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return None
        except httpx2.HTTPError as exc:
            return f"{url}/-/ready: {exc}"
        return f"{url}/-/ready: not ready"

    wait_until(missing, timeout=60, interval=0.2)


@contextmanager
def _running(argv: list[str], url: str, log: Path) -> Iterator[Server]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, url, log)
        yield Server(url, log)
    finally:
        stop(proc)


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """Everything to the webhook, at once: one notification per alert and change."""
    return {
        "global": {"resolve_timeout": "10s"},
        "route": {"receiver": "test", "group_by": ["alertname", "queue"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "test", "webhook_configs": [
            {"url": webhook_url, "send_resolved": True}]}],
    }


@contextmanager
def alertmanager(folder: Path, webhook_url: str) -> Iterator[Server]:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary("alertmanager"), f"--config.file={config}",
            f"--storage.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address="]  # no gossip port: several may run on one host
    with _running(argv, url, folder / "alertmanager.log") as server:
        yield server


def prometheus_config(jobs: dict[str, Sequence[str]], rule_file: Path,
                      alertmanager_url: str, interval: str = "1s") -> dict[str, Any]:
    """Scrape ``jobs`` (job name -> host:port targets) every ``interval``, evaluate
    ``rule_file`` as often, send alerts to the Alertmanager at ``alertmanager_url``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "rule_files": [str(rule_file)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [alertmanager_url.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
                           for job, targets in jobs.items()],
    }


@contextmanager
def prometheus(folder: Path, config: dict[str, Any]) -> Iterator[Server]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([binary("promtool"), "check", "config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary("prometheus"), f"--config.file={path}",
            f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
    with _running(argv, url, folder / "prometheus.log") as server:
        yield server


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result (vector samples: metric labels and [time, value]);
    AssertionError with Prometheus's message when the expression is refused."""
    answer = httpx2.get(f"{prometheus_url}/api/v1/query", params={"query": expr},
                        timeout=10).json()
    assert answer.get("status") == "success", f"{expr!r}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def targets_down(prometheus_url: str) -> list[str]:
    """The scrape targets not up (or not scraped yet), with their last error."""
    active = httpx2.get(f"{prometheus_url}/api/v1/targets", timeout=10).json()["data"][
        "activeTargets"]
    return [f"{t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}".strip()
            for t in active if t["health"] != "up"]
