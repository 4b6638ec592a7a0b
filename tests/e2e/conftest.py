"""Real `celery worker` processes against the simulator, the test broker and database.

pytest-celery's Docker-based fixtures cannot run without a Docker engine, and
celery.contrib.testing's in-process worker would not exercise the real CLI, pool and
signals, so these tests start `celery -A farm worker` as subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis
from tests_e2e import start_worker, stop, wait_ready

from farm.client import Farm
from farm.settings import Settings


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
