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
from sqlalchemy import text

from farm import services
from farm.client import Farm
from farm.jobs import JobStatus
from farm.settings import Settings
from tests_e2e import start_worker, stop, wait_ready

JOBS = 600


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
    workers = [start_worker(env, log, "haiku-simple", 50) for log in logs]
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
            time.sleep(2.0)  # about a third done, 100 calls in flight
            _kill_valkey(valkey_dir)
            time.sleep(3.0)
            services.start_valkey(valkey_dir, valkey_port)
            views = farm.wait(ids, timeout=240)
            with farm.engine.connect() as conn:
                ok = dict(conn.execute(text(
                    "select job_id, count(*) from attempts where outcome = 'ok' "
                    "and job_id = any(:ids) group by job_id"), {"ids": ids}).all())
        calls = httpx2.get(f"{sim_url}/_sim/stats").json()["messages_requests"]
        swept = sum(log.read_text(errors="replace").count("whose message was lost")
                    for log in logs)
        statuses = {v.status for v in views}
        duplicates = sum(1 for n in ok.values() if n > 1)
        print(f"\nRedis SIGKILL + restart: {JOBS} submitted, {len(views)} terminal "
              f"({sum(v.status is JobStatus.SUCCEEDED for v in views)} succeeded), "
              f"{duplicates} duplicates, {calls - JOBS} extra provider calls, "
              f"{swept} orphan sweep(s) that found lost messages")
        assert statuses == {JobStatus.SUCCEEDED}, statuses
        assert len(ok) == JOBS and duplicates == 0
    finally:
        for worker in workers:
            stop(worker)
