"""Redis is killed (SIGKILL, AOF on) in the middle of a run and started again: no job is
lost, none finishes twice.

A hard kill is the harsh case: besides the connections, the last second of writes may be
gone (appendfsync everysec), and kombu's two-step pop (take the message, then record it as
unacknowledged) can lose a message in flight. Postgres holds every job, and the orphan
sweep publishes again whatever Redis lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx2

from farm import services
from farm.client import Farm
from farm.jobs import JobStatus
from farm.settings import Settings
from tests_e2e import (
    attempt_rows,
    calls_under_way,
    log_text,
    start_worker,
    stop,
    wait_busy,
    wait_for_text,
    wait_ready,
)

JOBS = 600
SLOTS = 50  # per worker
OUTAGE_S = 3.0
BROKER_LOST = "Connection to broker lost"  # Celery's consumer, when Redis goes away


def _kill_valkey(data_dir: Path) -> None:
    pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("valkey did not die")


def test_redis_killed_and_restarted_mid_run(own_valkey: tuple[Path, int, str],
                                            e2e_env: dict[str, str], sim_url: str,
                                            tmp_path: Path) -> None:
    valkey_dir, valkey_port, valkey_url = own_valkey
    env = {**e2e_env, "FARM_BROKER_URL": valkey_url, "FARM_ORPHAN_SWEEP_S": "5",
           "FARM_ORPHAN_AGE_S": "15"}
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [start_worker(env, log, "haiku-simple", SLOTS) for log in logs]
    try:
        for log, worker in zip(logs, workers, strict=True):
            wait_ready(log, worker)
        httpx2.post(f"{sim_url}/_sim/reset")
        settings = Settings(broker_url=valkey_url, database_url=env["FARM_DATABASE_URL"],
                            data_dir=tmp_path)
        with Farm(settings) as farm:
            ids = farm.submit_many([
                {"prompt": f"[[sim:latency=1]] question {i}?", "complexity": "simple"}
                for i in range(JOBS)
            ])
            for log in logs:  # calls under way on both workers
                wait_busy(farm.engine, log, ids, SLOTS // 2)
            assert BROKER_LOST not in log_text(*logs)
            # what the workers have taken and not finished, and have started: the calls the
            # kill catches in flight (1 s long; the kill follows within milliseconds)
            under_way = set().union(*(calls_under_way(farm.engine, log, ids) for log in logs))
            assert under_way, "no call under way when Redis was killed"
            _kill_valkey(valkey_dir)
            killed = time.monotonic()
            for log in logs:  # each worker met the outage: it lost its broker connection
                wait_for_text([log], BROKER_LOST)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))  # the rest of it
            services.start_valkey(valkey_dir, valkey_port)
            views = farm.wait(ids, timeout=240)
            ok = attempt_rows(farm.engine, ids, "ok")
        calls = httpx2.get(f"{sim_url}/_sim/stats").json()["messages_requests"]
        swept = sum(log.read_text(errors="replace").count("whose message was lost")
                    for log in logs)
        statuses = {v.status for v in views}
        duplicates = sum(1 for n in ok.values() if n > 1)
        print(f"\nRedis SIGKILL + restart: {JOBS} submitted, {len(under_way)} calls under way "
              f"at the kill, {len(views)} terminal "
              f"({sum(v.status is JobStatus.SUCCEEDED for v in views)} succeeded), "
              f"{duplicates} duplicates, {calls - JOBS} extra provider calls, "
              f"{swept} orphan sweep(s) that found lost messages")
        assert statuses == {JobStatus.SUCCEEDED}, statuses
        assert len(ok) == JOBS and duplicates == 0
        # the calls under way when Redis died ended once, recorded
        assert {job: ok.get(job) for job in under_way} == dict.fromkeys(under_way, 1)
    finally:
        for worker in workers:
            stop(worker)
