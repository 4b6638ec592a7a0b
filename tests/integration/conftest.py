from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    """A Redis client on the test broker (a module may define its own, differently made)."""
    made = redis.Redis.from_url(broker_url)
    yield made
    made.close()


@pytest.fixture(autouse=True)
def _leave_nothing_behind(broker_url: str, database_url: str) -> Iterator[None]:
    """Integration tests enqueue without workers: afterwards, nothing of theirs may be left
    for the e2e workers to run (their messages, or running jobs a reaper would re-queue)."""
    yield
    client = redis.Redis.from_url(broker_url)
    try:
        client.flushdb()
    finally:
        client.close()
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET status = 'cancelled', lease_until = NULL "
                     "WHERE status IN ('queued', 'running')")
