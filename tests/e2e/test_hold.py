"""The spend limit: the job that hits it is dead-lettered once, every other job is held
(queued, no call, no attempt) until an operator releases the farm."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import start_worker, stop, wait_ready


@pytest.fixture
def held_worker(e2e_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**e2e_env, "FARM_HOLD_RECHECK_S": "1"}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "haiku-simple", 10)
    try:
        wait_ready(log, worker)
        yield env
    finally:
        subprocess.run([sys.executable, "-m", "farm.cli", "hold", "--release"], env=env,
                       capture_output=True, timeout=60)
        stop(worker)
    assert "ALERT" in log.read_text()


def test_spend_limit_holds_the_farm_until_released(
    held_worker: dict[str, str], farm: Farm, sim_stats: Callable[[], dict[str, object]]
) -> None:
    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=held_worker,
                              capture_output=True, text=True, timeout=60).stdout

    limit = farm.submit(prompt="[[sim:spend_limit]] this one hits the limit")
    view = farm.wait([limit], timeout=30)[0]
    assert view.status is JobStatus.FAILED and view.attempts == 1  # not retried in a loop
    assert farm.dead_letter(limit)["error_class"] == "spend_limit"
    assert "HELD" in cli("hold")
    waiting = farm.submit_many([{"prompt": f"held {i}?"} for i in range(5)])
    time.sleep(4)
    views = farm.statuses(waiting)
    assert {v.status for v in views} == {JobStatus.QUEUED}
    assert all(v.attempts == 0 for v in views)
    assert sim_stats()["messages_requests"] == 1  # only the call that hit the limit
    assert "released" in cli("hold", "--release")
    assert "not held" in cli("hold")
    views = farm.wait(waiting, timeout=15)  # well before any reaper would step in
    assert {v.status for v in views} == {JobStatus.SUCCEEDED}
