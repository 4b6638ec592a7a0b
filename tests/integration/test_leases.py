"""Leases and the reaper against real Postgres and Redis (no workers)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from farm import leases, store
from farm.client import Farm
from farm.settings import Settings


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Farm]:
    with Farm(Settings(broker_url=broker_url, database_url=database_url,
                       data_dir=tmp_path)) as f:
        yield f


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_reaper_requeues_expired_leases_only(farm: Farm, broker: redis.Redis) -> None:
    lost, alive = farm.submit(prompt="lost"), farm.submit(prompt="alive")
    for job, lease in ((lost, -5), (alive, 60)):
        started = store.start_job(farm.engine, job, lease_s=lease)
        assert started is not None and started.attempt == 1
    # a second copy of a message finds a live lease and does not start the job again
    assert store.start_job(farm.engine, alive, lease_s=60) is None
    republished: list[uuid.UUID] = []
    n = leases.reap(farm.engine, lambda j, q, p: republished.append(j), grace_s=30,
                    broker=broker)
    assert n == 1 and republished == [lost]
    assert farm.status(lost).status.value == "queued"
    assert farm.status(alive).status.value == "running"
    # the re-queued job starts again, as attempt 2
    again = store.start_job(farm.engine, lost, lease_s=60)
    assert again is not None and again.attempt == 2


def test_renewal_keeps_a_lease_alive(farm: Farm) -> None:
    job = farm.submit(prompt="long call")
    store.start_job(farm.engine, job, lease_s=1)
    assert leases.renew(farm.engine, [job], 60) == 1
    time.sleep(1.2)
    assert leases.reap(farm.engine, lambda *a: None, grace_s=30) == 0
    assert farm.status(job).status.value == "running"


def test_message_taken_by_a_dead_worker_is_republished(farm: Farm, broker: redis.Redis) -> None:
    job = farm.submit(prompt="taken, never started")
    future = farm.submit(prompt="a retry not yet due")
    with farm.engine.begin() as conn:
        conn.execute(text("update jobs set next_run_at = now() + interval '1 hour' "
                          "where id = :i"), {"i": future})
    for i, jid in enumerate((job, future)):
        tag = f"tag-{i}"
        message = {"headers": {"task": "farm.run_job", "id": str(jid)}, "body": "",
                   "properties": {}}
        broker.hset("unacked", tag, json.dumps([message, "farm", "haiku-simple"]))
        broker.zadd("unacked_index", {tag: time.time() - 120})
    assert leases.long_reserved(broker, 60) == [job, future] or set(
        leases.long_reserved(broker, 60)) == {job, future}
    republished: list[uuid.UUID] = []
    leases.reap(farm.engine, lambda j, q, p: republished.append(j), grace_s=60, broker=broker)
    assert republished == [job]  # the not-yet-due retry is left to its holder
    republished.clear()
    leases.reap(farm.engine, lambda j, q, p: republished.append(j), grace_s=60, broker=broker)
    assert republished == []  # not again while its new message is on its way
