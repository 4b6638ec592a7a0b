"""The `celery worker` command line of the farm, and the wait until a worker is ready:
built here once for the CLI, the tests, the demo and the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

READY_MARK = " ready."  # what a Celery worker logs once it consumes


def worker_argv(queues: str, *, concurrency: int, pool: str = "threads", app: str = "farm",
                loglevel: str = "INFO", name: str | None = None, events: bool = True,
                extra: Sequence[str] = ()) -> list[str]:
    """``python -m celery -A APP worker`` on the comma-separated ``queues``. Gossip and mingle
    are off: workers need nothing from each other at start, and both cost broker traffic."""
    node = name or f"{queues.split(',')[0]}@%h-{os.getpid()}"
    return [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues, "-P", pool,
            "-c", str(concurrency), "-l", loglevel, *(["-E"] if events else []), "-n", node,
            "--without-gossip", "--without-mingle", *extra]


class WorkerNotReady(RuntimeError):
    """The worker exited, or did not say it was ready in time; the message ends with the
    tail of its log."""


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Until the worker writing ``log`` says it is ready; WorkerNotReady if it exits first or
    does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerNotReady(f"worker exited with status {proc.returncode} before it was "
                                 f"ready; log tail:\n{_tail(log)}")
        if log.exists() and READY_MARK in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise WorkerNotReady(f"worker not ready after {timeout:.0f}s; log tail:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"
