"""SIGTERM a worker in the middle of a run: its running jobs finish, nothing is lost, no
call is made twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import start_worker, stop, wait_ready

JOBS = 200


def test_sigterm_lets_running_jobs_finish(e2e_env: dict[str, str], farm: Farm, tmp_path: Path,
                                          sim_stats: Callable[[], dict[str, object]]) -> None:
    survivor_log, leaving_log = tmp_path / "survivor.log", tmp_path / "leaving.log"
    survivor = start_worker(e2e_env, survivor_log, "haiku-simple", 20)
    leaving = start_worker(e2e_env, leaving_log, "haiku-simple", 20)
    try:
        wait_ready(survivor_log, survivor)
        wait_ready(leaving_log, leaving)
        ids = farm.submit_many([{"prompt": f"[[sim:latency=2]] graceful {i}?",
                                 "complexity": "simple"} for i in range(JOBS)])
        time.sleep(3.0)  # both workers are in the middle of calls
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(60) == 0  # warm shutdown: it waited for its running jobs
        views = farm.wait(ids, timeout=120)
    finally:
        stop(leaving)
        stop(survivor)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * JOBS
    assert all(v.attempts == 1 for v in views)
    assert sim_stats()["messages_requests"] == JOBS  # nothing was run twice
    log = leaving_log.read_text()
    assert "succeeded" in log and "Warm shutdown" in log
