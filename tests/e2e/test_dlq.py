"""Dead letters: fatal and exhausted jobs land in the DLQ table and queue; replay and purge."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis
from celery import Celery

from celeryconfig import farm_retry_policies
from farm.client import Farm
from farm.jobs import JobStatus
from farm.reliability.policies import policy_for
from tests_e2e import close_circuits


def dead_letter_messages(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(int(client.llen(k)) for k in client.keys("dead-letter*"))
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _circuits_closed(broker_url: str) -> None:
    """The 529s of an earlier test (three calls of its dead job) and this one's would open
    haiku's breaker (5 in a row) and defer these jobs by its cooldown, 15 s and then, after
    a failed probe, 30 s more."""
    close_circuits(broker_url)


@pytest.fixture
def overloaded_sim(sim_url: str) -> Iterator[None]:
    httpx2.post(f"{sim_url}/_sim/config", json={"fault_529_rate": 1.0})
    yield
    httpx2.post(f"{sim_url}/_sim/config", json={"fault_529_rate": 0.0})


def test_fatal_and_exhausted_jobs_are_dead_lettered(workers: list[Path], farm: Farm,
                                                     broker_url: str) -> None:
    farm.purge_dead_letters()
    bad = farm.submit(prompt="[[sim:status=400]] please reject")
    tired = farm.submit(prompt="[[sim:status=529]] always overloaded", complexity="simple")
    views = {v.id: v for v in farm.wait([bad, tired], timeout=90)}
    budget = policy_for(farm_retry_policies, views[tired].queue).max_attempts
    assert views[bad].status is JobStatus.FAILED and views[bad].attempts == 1
    assert views[tired].status is JobStatus.DEAD and views[tired].attempts == budget
    rows = {r["job_id"]: r for r in farm.dead_letters()}
    assert rows[bad]["error_class"] == "bad_request" and rows[bad]["attempts"] == 1
    assert rows[tired]["error_class"] == "overloaded" and rows[tired]["attempts"] == budget
    assert rows[tired]["first_failure_at"] < rows[tired]["last_failure_at"]
    assert "529" in rows[tired]["error_message"]
    assert dead_letter_messages(broker_url) == 2  # and on the real dead-letter queue
    assert farm.dead_letter(bad)["request"]["prompt"].endswith("please reject")


def test_invalid_inline_job_is_dead_lettered(workers: list[Path], farm: Farm,
                                             broker_url: str) -> None:
    app = Celery("svc", broker=broker_url, set_as_current=False)
    try:
        sent = app.send_task("farm.run_job", kwargs={"request": {"prompt": ""}},
                             queue="farm-intake")
    finally:
        app.close()
    assert farm.wait([sent.id], timeout=30)[0].status is JobStatus.FAILED
    assert farm.dead_letter(sent.id)["error_class"] == "invalid"


def test_replay_runs_a_dead_job_again_with_a_fresh_budget(
    workers: list[Path], farm: Farm, overloaded_sim: None, sim_url: str
) -> None:
    job = farm.submit(prompt="Which planet is largest?", complexity="simple")
    assert farm.wait([job], timeout=90)[0].status is JobStatus.DEAD
    httpx2.post(f"{sim_url}/_sim/config", json={"fault_529_rate": 0.0})
    [(old, new)] = farm.replay([job])
    assert old == job and new != job
    view = farm.wait([new], timeout=60)[0]
    assert view.status is JobStatus.SUCCEEDED and view.attempts == 1
    assert farm.dead_letter(job)["replayed_as"] == new
    with pytest.raises(KeyError, match="already replayed"):
        farm.replay([job])
    with farm.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("select replay_of from jobs where id = :i"),
                            {"i": new}).scalar() == job


def test_dlq_cli(workers: list[Path], farm: Farm, e2e_env: dict[str, str],
                 broker_url: str) -> None:
    job = farm.submit(prompt="[[sim:status=404]] nowhere")
    farm.wait([job], timeout=30)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", "dlq", *args], env=e2e_env,
                              capture_output=True, text=True, timeout=60)

    listed = cli("list", "--json")
    assert str(job) in {r["job_id"] for r in json.loads(listed.stdout)}
    assert "not_found" in cli("show", str(job)).stdout
    assert cli("show", "00000000-0000-0000-0000-000000000000").returncode != 0
    assert cli("replay").returncode != 0  # ids or --all
    replayed = cli("replay", str(job))
    assert replayed.returncode == 0 and f"{job} ->" in replayed.stdout
    purged = cli("purge", "--yes")
    assert purged.returncode == 0 and "purged" in purged.stdout
    assert farm.dead_letters(include_replayed=True) == [] or all(
        r["job_id"] != job for r in farm.dead_letters(include_replayed=True))
    assert dead_letter_messages(broker_url) == 0
