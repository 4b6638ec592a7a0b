"""Starting and stopping real `celery worker` processes for e2e and fault tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from farm.worker.command import wait_ready as ready
from farm.worker.command import worker_argv

API_KEY = "sk-test-e2e-secret-0123456789abcdef"


def start_worker(env: dict[str, str], log: Path, queues: str, concurrency: int = 20,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(worker_argv(queues, concurrency=concurrency, extra=extra),
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    ready(proc, log, timeout)


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
