"""A job that waits says why (`farm status`), and resuming a queue or releasing the hold
sends its waiting jobs back at once, not at their next look (here set 10 minutes away)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from farm.client import Farm
from farm.jobs import JobStatus
from farm.reliability.hold import release, set_hold
from tests_e2e import running_workers, wait_until

RECHECK_S = 600  # far beyond every wait below: only a wake-up can run the jobs in time


@pytest.fixture(scope="module")
def slow_recheck(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, str]]:
    env = {**e2e_env, "FARM_HOLD_RECHECK_S": str(RECHECK_S)}
    log = tmp_path_factory.mktemp("waiting") / "worker.log"
    with running_workers(env, [(log, "haiku-simple", 10)]):
        yield env


def farm_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_reason(farm: Farm, ids: list[uuid.UUID], reason: str) -> None:
    def missing() -> str | None:
        views = farm.statuses(ids)
        off = [(v.id, v.status, v.wait_reason) for v in views
               if v.status is not JobStatus.QUEUED or not (v.wait_reason or "").startswith(
                   reason) or v.next_run_at is None]
        return f"not waiting for {reason!r}: {off}" if off or len(views) < len(ids) else None

    wait_until(missing, timeout=60)


def test_a_paused_queue_says_so_and_resume_runs_its_jobs_now(
        slow_recheck: dict[str, str], farm: Farm) -> None:
    farm_cli(slow_recheck, "pause", "haiku-simple")
    # a worker reads the paused queues at most once a second (farm.capacity.admission): a
    # job taken before it has read them runs; this is set-up, not what the test observes
    time.sleep(1.5)
    try:
        ids = farm.submit_many([{"prompt": f"paused {i}?", "complexity": "simple"}
                                for i in range(3)])
        wait_for_reason(farm, ids, "queue haiku-simple is paused")
        shown = farm_cli(slow_recheck, "status", str(ids[0]))
        assert "queue haiku-simple is paused" in shown
    finally:
        resumed = farm_cli(slow_recheck, "resume", "haiku-simple")
    assert "3 waiting job(s) sent back" in resumed
    views = farm.wait(ids, timeout=60)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * 3
    assert all(v.wait_reason is None and v.attempts == 1 for v in views)


def test_held_jobs_say_so_and_release_runs_them_now(slow_recheck: dict[str, str],
                                                    farm: Farm) -> None:
    client = redis.Redis.from_url(slow_recheck["FARM_BROKER_URL"])
    set_hold(client, "spend limit reached (test)")
    # a worker reads the flag at most every 2 s (farm.reliability.hold.HoldCheck): a job
    # taken before it has read it would run; this is set-up, not what the test observes
    time.sleep(3.0)
    try:
        ids = farm.submit_many([{"prompt": f"held {i}?", "complexity": "simple"}
                                for i in range(3)])
        wait_for_reason(farm, ids, "held: spend limit reached (test)")
        released = farm_cli(slow_recheck, "hold", "--release")
    finally:
        release(client)
        client.close()
    assert "released: 3 held job(s) sent back" in released
    views = farm.wait(ids, timeout=60)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * 3
