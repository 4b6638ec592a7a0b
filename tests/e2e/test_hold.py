"""The spend limit: the job that hits it is dead-lettered once, every other job is held
(queued, no call, no attempt) until an operator releases the farm."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import attempt_rows, start_worker, stop, wait_for_each, wait_ready


@pytest.fixture
def held_worker(e2e_env: dict[str, str], tmp_path: Path
                ) -> Iterator[tuple[dict[str, str], Path]]:
    """A worker that looks at a held job again every second: (its env, its log)."""
    env = {**e2e_env, "FARM_HOLD_RECHECK_S": "1"}
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "haiku-simple", 10)
    try:
        wait_ready(log, worker)
        yield env, log
    finally:
        subprocess.run([sys.executable, "-m", "farm.cli", "hold", "--release"], env=env,
                       capture_output=True, timeout=60)
        stop(worker)
    assert "ALERT" in log.read_text()


def test_spend_limit_holds_the_farm_until_released(
    held_worker: tuple[dict[str, str], Path], farm: Farm,
    sim_stats: Callable[[], dict[str, object]],
) -> None:
    env, log = held_worker

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60).stdout

    limit = farm.submit(prompt="[[sim:spend_limit]] this one hits the limit")
    view = farm.wait([limit], timeout=30)[0]
    assert view.status is JobStatus.FAILED and view.attempts == 1  # not retried in a loop
    assert farm.dead_letter(limit)["error_class"] == "spend_limit"
    assert "HELD" in cli("hold")
    waiting = farm.submit_many([{"prompt": f"held {i}?"} for i in range(5)])
    # the worker takes each job, finds the farm held and hands the job back (store.defer);
    # twice each: it keeps holding them, not only the first time it sees them
    wait_for_each([log], waiting, "job {id} held:", times=2)
    with farm.engine.connect() as conn:
        rows = conn.execute(text(
            "select id, status, attempts, next_run_at, started_at from jobs "
            "where id = any(:ids)"), {"ids": waiting}).all()
    assert len(rows) == len(waiting)
    for row in rows:
        assert row.status == JobStatus.QUEUED.value and row.attempts == 0, row
        assert row.next_run_at is not None and row.started_at is None, row  # deferred, unstarted
    assert attempt_rows(farm.engine, waiting) == {}  # no call made for them
    assert sim_stats()["messages_requests"] == 1  # only the call that hit the limit
    assert "released" in cli("hold", "--release")
    assert "not held" in cli("hold")
    views = farm.wait(waiting, timeout=60)
    assert {v.status for v in views} == {JobStatus.SUCCEEDED}
    # each held job ran exactly once: one start, one call
    assert all(v.attempts == 1 for v in views), [(v.id, v.attempts) for v in views]
    assert attempt_rows(farm.engine, waiting) == {str(job): 1 for job in waiting}
    assert sim_stats()["messages_requests"] == 1 + len(waiting)
