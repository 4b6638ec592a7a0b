"""Postgres stops for 10 s in the middle of a run: no result is lost, no call is repeated."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx2
from sqlalchemy import text

from farm import services
from farm.client import Farm
from farm.jobs import JobStatus
from farm.settings import Settings
from tests_e2e import start_worker, stop, wait_ready

JOBS = 300


def test_postgres_down_for_ten_seconds(own_postgres: tuple[Path, int, str],
                                       e2e_env: dict[str, str], sim_url: str,
                                       tmp_path: Path) -> None:
    pg_dir, pg_port, pg_url = own_postgres
    env = {**e2e_env, "FARM_DATABASE_URL": pg_url}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "haiku-simple", 100)
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
            time.sleep(2.5)  # calls are in flight
            services.stop_postgres(pg_dir)
            stopped_at = time.monotonic()
            restart = threading.Timer(10.0, services.start_postgres, (pg_dir, pg_port))
            restart.start()
            restart.join()
            outage = time.monotonic() - stopped_at
            views = farm.wait(ids, timeout=180)
            with farm.engine.connect() as conn:
                calls = conn.execute(text("select count(*) from attempts")).scalar()
        stats = httpx2.get(f"{sim_url}/_sim/stats").json()
        statuses = {v.status for v in views}
        assert outage >= 10.0
        assert statuses == {JobStatus.SUCCEEDED}, statuses
        assert all(v.attempts == 1 and v.response_text for v in views)
        assert calls == JOBS
        assert stats["messages_requests"] == JOBS  # no provider call was repeated
        assert "Postgres unreachable" in log.read_text()
    finally:
        stop(worker)
