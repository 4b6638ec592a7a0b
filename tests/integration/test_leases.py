"""Leases and the reaper against real Postgres and Redis (no workers)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from farm.broker import layout
from farm.client import Farm
from farm.reliability import leases, orphans
from farm.settings import Settings
from farm.store import jobs as store


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
        started = store.start_job(farm.db, job, lease_s=lease)
        assert started is not None and started.attempt == 1
    # a second copy of a message finds a live lease and does not start the job again
    assert store.start_job(farm.db, alive, lease_s=60) is None
    republished: list[uuid.UUID] = []
    n = leases.reap(farm.db, lambda j, q, p: republished.append(j), grace_s=30,
                    broker=broker)
    assert n == 1 and republished == [lost]
    assert farm.status(lost).status.value == "queued"
    assert farm.status(alive).status.value == "running"
    # the re-queued job starts again, as attempt 2
    again = store.start_job(farm.db, lost, lease_s=60)
    assert again is not None and again.attempt == 2


def test_renewal_keeps_a_lease_alive(farm: Farm) -> None:
    """Of two jobs started with a 1 s lease, the renewed one survives the reaper that takes
    the other (so the reaper did run, and did look at leases)."""
    job, control = farm.submit(prompt="long call"), farm.submit(prompt="not renewed")
    started = store.start_job(farm.db, job, lease_s=1)
    store.start_job(farm.db, control, lease_s=1)
    running = leases.Running()
    assert started is not None
    running.add(job, started.attempt)
    assert leases.renew(farm.db, running, 60) == 1 and not running.lost()
    time.sleep(1.2)
    reaped: list[object] = []
    assert leases.reap(farm.db, lambda j, q, p: reaped.append(j), grace_s=30) == 1
    assert reaped == [control]
    assert farm.status(job).status.value == "running"
    assert farm.status(control).status.value == "queued"


def test_message_taken_by_a_dead_worker_is_republished(farm: Farm, broker: redis.Redis) -> None:
    job = farm.submit(prompt="taken, never started")
    future = farm.submit(prompt="a retry not yet due")
    with farm.db.begin() as conn:
        conn.execute("update jobs set next_run_at = now() + interval '1 hour' "
                     "where id = %(i)s", {"i": future})
    for i, jid in enumerate((job, future)):
        tag = f"tag-{i}"
        message = {"headers": {"task": "farm.run_job", "id": str(jid)}, "body": "",
                   "properties": {}}
        broker.hset("unacked", tag, json.dumps([message, "farm", "haiku-simple"]))
        broker.zadd("unacked_index", {tag: time.time() - 120})
    assert layout.long_reserved(broker, 60) == [job, future] or set(
        layout.long_reserved(broker, 60)) == {job, future}
    republished: list[uuid.UUID] = []
    leases.reap(farm.db, lambda j, q, p: republished.append(j), grace_s=60, broker=broker)
    assert republished == [job]  # the not-yet-due retry is left to its holder
    republished.clear()
    leases.reap(farm.db, lambda j, q, p: republished.append(j), grace_s=60, broker=broker)
    assert republished == []  # not again while its new message is on its way


def _age(farm: Farm, seconds: int) -> None:
    with farm.db.begin() as conn:
        conn.execute("update jobs set created_at = now() - make_interval(secs => %(s)s)",
                     {"s": seconds})


def _drop_message(broker: redis.Redis, job: uuid.UUID) -> None:
    for key in broker.keys("haiku-simple*"):
        for raw in broker.lrange(key, 0, -1):
            if str(job).encode() in raw:
                assert broker.lrem(key, 1, raw) == 1
                return
    raise AssertionError(f"no message of {job} in Redis")


def test_orphan_sweep_republishes_only_jobs_whose_message_is_gone(
        farm: Farm, broker: redis.Redis) -> None:
    kept, lost, due_lost, due_held, fresh_lost = (
        farm.submit(prompt=f"question {i}?", complexity="simple") for i in range(5))
    _age(farm, 120)
    fresh_lost = farm.submit(prompt="just submitted", complexity="simple")
    for job in (lost, due_lost, due_held, fresh_lost):
        _drop_message(broker, job)
    # two retries due 5 minutes ago: one's message is gone, one is held by a worker
    with farm.db.begin() as conn:
        conn.execute("update jobs set next_run_at = now() - interval '5 minutes' "
                     "where id = any(%(ids)s)", {"ids": [due_lost, due_held]})
    message = {"headers": {"task": "farm.run_job", "id": str(due_held)}, "body": "",
               "properties": {"correlation_id": str(due_held)}}
    broker.hset("unacked", "tag-1", json.dumps([message, "farm", "haiku-simple"]))
    republished: list[uuid.UUID] = []
    n = orphans.sweep_orphans(farm.db, broker, lambda j, q, p: republished.append(j),
                             age_s=60, grace_s=30)
    # kept is still queued in Redis; fresh_lost is too young to judge; due_held is held
    assert n == 2 and set(republished) == {lost, due_lost}
    republished.clear()
    assert orphans.sweep_orphans(farm.db, broker, lambda j, q, p: republished.append(j),
                                age_s=60, grace_s=30) == 0  # not again while it is on its way
    assert kept not in republished


def test_orphan_sweep_runs_once_per_interval_across_workers(
        farm: Farm, broker: redis.Redis) -> None:
    job = farm.submit(prompt="orphan", complexity="simple")
    _age(farm, 120)
    _drop_message(broker, job)
    calls: list[uuid.UUID] = []
    sweep = dict(every_s=60, age_s=60, grace_s=30)
    assert orphans.sweep_if_due(farm.db, broker, lambda j, q, p: calls.append(j), **sweep) == 1
    with farm.db.begin() as conn:  # pretend its new message was lost as well
        conn.execute("update jobs set next_run_at = now() - interval '1 hour'")
    # another worker, inside the same interval: it does not sweep
    assert orphans.sweep_if_due(farm.db, broker, lambda j, q, p: calls.append(j), **sweep) == 0
    assert calls == [job]


def test_orphan_sweep_skips_a_backlog_too_long_to_scan(farm: Farm, broker: redis.Redis) -> None:
    jobs = farm.submit_many([{"prompt": f"q{i}", "complexity": "simple"} for i in range(5)])
    _age(farm, 120)
    _drop_message(broker, jobs[0])
    calls: list[uuid.UUID] = []
    assert orphans.sweep_orphans(farm.db, broker, lambda j, q, p: calls.append(j),
                                age_s=60, grace_s=30, scan_max=3) == 0
    assert orphans.sweep_orphans(farm.db, broker, lambda j, q, p: calls.append(j),
                                age_s=60, grace_s=30, scan_max=4) == 1
    assert calls == [jobs[0]]
