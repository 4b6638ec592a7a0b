"""SIGTERM a worker in the middle of a run: its running jobs finish, nothing is lost, no
call is made twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import running_workers

JOBS = 200


def test_sigterm_lets_running_jobs_finish(e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
                                          sim_stats: Callable[[], dict[str, object]]) -> None:
    survivor_log, leaving_log = tmp_path / "survivor.log", tmp_path / "leaving.log"
    specs = [(log, "haiku-simple", 20) for log in (survivor_log, leaving_log)]
    with running_workers(e2e_env, specs) as (_, leaving):
        ids = farm.submit_many([{"prompt": f"[[sim:latency=2]] graceful {i}?",
                                 "complexity": "simple"} for i in range(JOBS)])
        time.sleep(3.0)  # both workers are in the middle of calls
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(60) == 0  # warm shutdown: it waited for its running jobs
        views = farm.wait(ids, timeout=120)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * JOBS
    assert all(v.attempts == 1 for v in views)
    assert sim_stats()["messages_requests"] == JOBS  # nothing was run twice
    log = leaving_log.read_text()
    assert "succeeded" in log and "Warm shutdown" in log


def test_sigterm_grace_is_bounded(e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
                                  sim_stats: Callable[[], dict[str, object]]) -> None:
    """Jobs longer than the grace: handed back when it ends, run again on another worker."""
    env = {**e2e_env, "FARM_SHUTDOWN_GRACE_S": "2", "FARM_REAPER_INTERVAL_S": "1"}
    survivor_log, leaving_log = tmp_path / "survivor.log", tmp_path / "leaving.log"
    specs = [(log, "haiku-simple", 10) for log in (survivor_log, leaving_log)]
    with running_workers(env, specs) as (_, leaving):
        ids = farm.submit_many([{"prompt": f"[[sim:latency=6]] long {i}?",
                                 "complexity": "simple"} for i in range(20)])
        time.sleep(2.0)  # each worker is in the middle of 10 calls
        leaving.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert leaving.wait(60) == 1  # it did not wait 4 more seconds for its calls
        waited = time.monotonic() - sent
        views = farm.wait(ids, timeout=120)
        with farm.engine.connect() as conn:
            ok = conn.execute(text("select count(*) from attempts where outcome = 'ok' "
                                   "and job_id = any(:ids)"), {"ids": ids}).scalar()
    log = leaving_log.read_text()
    assert "shutdown grace of 2s is over: 10 running job(s) handed back" in log
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * 20
    assert ok == 20  # each job accounted once
    assert sorted(v.attempts for v in views) == [1] * 10 + [2] * 10
    print(f"\nSIGTERM with a 2 s grace: exited after {waited:.1f}s; 10 jobs handed back and "
          f"run again; {int(sim_stats()['messages_requests']) - 20} abandoned calls")  # type: ignore[call-overload]
