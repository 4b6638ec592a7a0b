"""Starting and stopping real `celery worker` processes for e2e and fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

API_KEY = "sk-test-e2e-secret-0123456789abcdef"


def start_worker(env: dict[str, str], log: Path, queues: str, concurrency: int = 20,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "farm", "worker", "-Q", queues,
             "-P", "threads", "-c", str(concurrency), "-l", "INFO", "-E",
             "-n", f"{queues.split(',')[0]}@%h-{os.getpid()}",
             "--without-gossip", "--without-mingle", *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()[-3000:]}")
        if " ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def running_workers(env: dict[str, str], specs: Sequence[tuple[Path, str, int]]
                    ) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Workers for (log, queues, concurrency) specs, all ready; stopped on the way out."""
    procs = [start_worker(env, log, queues, concurrency) for log, queues, concurrency in specs]
    try:
        for proc, (log, _, _) in zip(procs, specs, strict=True):
            wait_ready(log, proc)
        yield procs
    finally:
        for proc in procs:
            stop(proc)
