"""Postgres stops for 10 s in the middle of a run: no result is lost, no call is repeated."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
from sqlalchemy import text

from farm import services
from farm.client import Farm
from farm.jobs import JobStatus
from farm.settings import Settings
from tests_e2e import (
    attempt_rows,
    log_text,
    start_worker,
    stop,
    wait_busy,
    wait_for_text,
    wait_ready,
)

JOBS = 300
SLOTS = 100
OUTAGE_S = 10.0
UNREACHABLE = "Postgres unreachable"  # the worker's line when a write must wait


def test_postgres_down_for_ten_seconds(own_postgres: tuple[Path, int, str],
                                       e2e_env: dict[str, str], sim_url: str,
                                       tmp_path: Path) -> None:
    pg_dir, pg_port, pg_url = own_postgres
    env = {**e2e_env, "FARM_DATABASE_URL": pg_url}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "haiku-simple", SLOTS)
    try:
        wait_ready(log, worker)
        httpx2.post(f"{sim_url}/_sim/reset")
        settings = Settings(broker_url=env["FARM_BROKER_URL"], database_url=pg_url,
                            data_dir=tmp_path)
        with Farm(settings) as farm:
            ids = farm.submit_many([
                {"prompt": f"[[sim:latency=2]] question {i}?", "complexity": "simple"}
                for i in range(JOBS)
            ])
            under_way = wait_busy(farm.engine, log, ids, SLOTS // 2)  # calls in flight
            assert UNREACHABLE not in log_text(log)
            services.stop_postgres(pg_dir)
            down_at, stopped = datetime.now(UTC), time.monotonic()
            # the worker meets the outage: a call ends and its result cannot be written
            wait_for_text([log], UNREACHABLE, timeout=OUTAGE_S)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))  # the rest of it
            up_at = datetime.now(UTC)
            services.start_postgres(pg_dir, pg_port)
            views = farm.wait(ids, timeout=180)
            calls = attempt_rows(farm.engine, ids)
            with farm.engine.connect() as conn:
                # calls that ended while Postgres was down: their results were held until it
                # came back (the worker cannot have written them before)
                held: dict[str, str] = dict(conn.execute(text(
                    "select job_id::text, outcome from attempts where job_id = any(:ids) "
                    "and finished_at > :down and finished_at < :up"),
                    {"ids": ids, "down": down_at, "up": up_at}).all())
        stats = httpx2.get(f"{sim_url}/_sim/stats").json()
        statuses = {v.status for v in views}
        assert statuses == {JobStatus.SUCCEEDED}, statuses
        assert all(v.attempts == 1 and v.response_text for v in views)
        assert held, "no call ended during the outage: nothing was held through it"
        assert set(held.values()) == {"ok"}, held
        assert calls == {str(job): 1 for job in ids}  # each result recorded once
        assert stats["messages_requests"] == JOBS  # no provider call was repeated
        print(f"\nPostgres down {OUTAGE_S:.0f}s: {len(under_way)} calls under way when it "
              f"stopped; {len(held)} results held through the outage and recorded once")
    finally:
        stop(worker)
