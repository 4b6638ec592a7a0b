"""Real `celery worker` processes against the simulator, the test broker and database.

pytest-celery's Docker-based fixtures cannot run without a Docker engine, and
celery.contrib.testing's in-process worker would not exercise the real CLI, pool and
signals, so these tests start `celery -A farm worker` as subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from farm.client import Farm
from farm.settings import Settings

API_KEY = "sk-test-e2e-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def e2e_env(broker_url: str, database_url: str, sim_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("farm-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "ANTHROPIC_"))}
    env.update({
        "FARM_BROKER_URL": broker_url,
        "FARM_DATABASE_URL": database_url,
        "FARM_DATA_DIR": str(data_dir),
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": sim_url,
    })
    return env


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


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="module")
def workers(e2e_env: dict[str, str], worker_logs: Path) -> Iterator[list[Path]]:
    """One worker per specialization queue plus one on the intake queue."""
    specs = [("haiku-simple", 30), ("sonnet-complex", 30), ("farm-intake", 4)]
    procs, logs = [], []
    for queue, conc in specs:
        log = worker_logs / f"{queue}.log"
        procs.append(start_worker(e2e_env, log, queue, conc))
        logs.append(log)
    try:
        for proc, log in zip(procs, logs, strict=True):
            wait_ready(log, proc)
        yield logs
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture
def farm(e2e_env: dict[str, str]) -> Iterator[Farm]:
    settings = Settings(
        broker_url=e2e_env["FARM_BROKER_URL"], database_url=e2e_env["FARM_DATABASE_URL"],
        data_dir=Path(e2e_env["FARM_DATA_DIR"]),
    )
    with Farm(settings) as f:
        yield f


@pytest.fixture
def sim_stats(sim_url: str) -> Iterator[object]:
    def stats() -> dict[str, object]:
        result: dict[str, object] = httpx2.get(f"{sim_url}/_sim/stats").json()
        return result

    httpx2.post(f"{sim_url}/_sim/reset")
    yield stats


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()
