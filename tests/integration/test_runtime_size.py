"""A worker's runtime is sized from its real concurrency (farm.worker.runtime.size, told by
the worker_init signal): `celery -A farm worker -c 300` gets pools for 300 threads even
though FARM_WORKER_CONCURRENCY says 100."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from farm.provider.clients import GROUP, SPARE
from farm.settings import Settings
from farm.store.jobs import fetch_one
from farm.worker import runtime as rt


@pytest.fixture
def sized() -> Iterator[None]:
    yield
    rt.size(None)
    rt.reset()


def _close(built: rt.Runtime) -> None:
    """What rt.reset does for the process's runtime, for one built here."""
    built.stop.set()
    built.db.close()
    (built.clients or built.client).close()


def _settings(broker_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path,
                    anthropic_api_key="sk-test", worker_concurrency=100)


def test_the_pools_follow_the_workers_threads(broker_url: str, database_url: str,
                                              tmp_path: Path, sized: None) -> None:
    rt.size(300)
    built = rt.build(_settings(broker_url, database_url, tmp_path), {})
    assert built.settings.worker_concurrency == 300
    assert built.clients is not None and len(built.clients) == math.ceil(300 / GROUP)
    share = math.ceil(300 / len(built.clients))
    pool = built.clients.first._client._transport._pool  # httpcore's pool under the SDK
    assert pool._max_connections == share + SPARE
    assert pool._max_keepalive_connections == share + SPARE
    redis_pool = built.gate.limiter.redis.connection_pool  # type: ignore[attr-defined]
    assert redis_pool.max_connections == 300 + 32
    _close(built)


def test_without_a_size_the_settings_rule(broker_url: str, database_url: str, tmp_path: Path,
                                          sized: None) -> None:
    rt.size(None)
    built = rt.build(_settings(broker_url, database_url, tmp_path), {})
    assert built.settings.worker_concurrency == 100
    assert built.clients is not None and len(built.clients) == math.ceil(100 / GROUP)
    _close(built)


def test_the_database_pool_keeps_what_it_opens(broker_url: str, database_url: str,
                                               tmp_path: Path, sized: None) -> None:
    """Bursts of more threads than FARM_DB_POOL_SIZE open at most WORKER_POOL_FACTOR times as
    many connections, and a second burst opens none: a connection checked in is kept, not
    closed as an overflow one (each new one is a Postgres backend and a login)."""
    settings = _settings(broker_url, database_url, tmp_path).model_copy(
        update={"db_pool_size": 2})
    built = rt.build(settings, {})
    cap = 2 * rt.WORKER_POOL_FACTOR
    start = threading.Barrier(cap)

    def backend(_: int) -> int:
        start.wait(timeout=10)  # all at once: the pool must hand out `cap` connections
        row = fetch_one(built.db, "SELECT pg_backend_pid(), pg_sleep(0.05)", {}, 0.0)
        assert row is not None
        return int(row[0])

    def burst() -> set[int]:
        with ThreadPoolExecutor(cap) as pool:
            return set(pool.map(backend, range(cap)))

    try:
        first = burst()
        second = burst()
        assert len(first) == cap  # opened as the threads needed them
        assert second == first  # and kept: the second burst opened none
    finally:
        _close(built)
