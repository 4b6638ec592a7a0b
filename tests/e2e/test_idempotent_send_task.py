"""Idempotent submit through plain send_task, end to end: a real intake worker and the
simulator. Messages carrying one idempotency key (sent at once, or after the job ended)
make one job and one provider call; each other message is acknowledged with a result
naming the job that holds the key, and a log line says so."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import text

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import lines_per_id, log_text, running_workers, wait_for_each

Stats = Callable[[], dict[str, Any]]
PROMPT = "[[sim:latency=1]] IDEMPOTENT-E2E-PROMPT: name the largest planet."


@pytest.fixture(scope="module")
def intake_log(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Path]:
    """One worker on the intake queue: it records inline jobs and runs them."""
    log = tmp_path_factory.mktemp("idempotent") / "intake.log"
    with running_workers(e2e_env, [(log, "farm-intake", 4)]):
        yield log


@pytest.fixture
def sender(e2e_env: dict[str, str]) -> Iterator[Callable[[dict[str, Any]], str]]:
    """A service's plain Celery app: send_task to the intake queue, as the README shows."""
    app = Celery(broker=e2e_env["FARM_BROKER_URL"], set_as_current=False)

    def send(request: dict[str, Any]) -> str:
        return str(app.send_task("farm.run_job", kwargs={"request": request},
                                 queue="farm-intake", kwargsrepr="<farm job>").id)

    yield send
    app.close()


def test_send_tasks_with_one_key_make_one_job_and_one_call(
        intake_log: Path, farm: Farm, sim_stats: Stats,
        sender: Callable[[dict[str, Any]], str]) -> None:
    key = f"e2e-{uuid.uuid4()}"
    request = {"prompt": PROMPT, "tenant": "svc", "complexity": "simple", "max_tokens": 64,
               "idempotency_key": key}
    # two at once: the second is delivered while the first's call (1 s) is in flight
    sent = [sender(request), sender(request)]
    wait_for_each([intake_log], sent, "Task farm.run_job[{id}] succeeded", timeout=90)
    with farm.engine.connect() as conn:
        holders = conn.execute(text("SELECT id FROM jobs WHERE tenant = 'svc' AND "
                                    "idempotency_key = :k"), {"k": key}).scalars().all()
    assert len(holders) == 1 and str(holders[0]) in sent
    holder = holders[0]
    [other] = [i for i in sent if i != str(holder)]
    view = farm.wait([holder], timeout=60)[0]
    assert view.status is JobStatus.SUCCEEDED and view.attempts == 1
    # one more, after the job ended: the same job, its status as it is now
    late = sender(request)
    wait_for_each([intake_log], [late], "Task farm.run_job[{id}] succeeded", timeout=60)
    assert sim_stats()["messages_requests"] == 1
    assert farm.statuses([other, late]) == []  # no job of their own: nothing could run
    text_ = log_text(intake_log)
    results = lines_per_id(text_, [other, late], "Task farm.run_job[{id}] succeeded",
                           f"'job_id': '{holder}'", f"'duplicate_of': '{holder}'")
    assert results == {other: 1, late: 1}, text_
    assert lines_per_id(text_, [late], "Task farm.run_job[{id}] succeeded",
                        "'status': 'succeeded'") == {late: 1}
    said = lines_per_id(text_, [other, late],
                        f"job {{id}}: its idempotency key is held by job {holder}")
    assert said == {other: 1, late: 1}
    assert "IDEMPOTENT-E2E-PROMPT" not in text_


def test_a_send_task_under_a_key_held_with_another_request_is_refused(
        intake_log: Path, farm: Farm, sim_stats: Stats,
        sender: Callable[[dict[str, Any]], str]) -> None:
    key = f"e2e-{uuid.uuid4()}"
    holder = farm.submit(prompt="hold this key", tenant="svc", complexity="simple",
                         max_tokens=16, idempotency_key=key)
    try:
        refused = sender({"prompt": PROMPT, "tenant": "svc", "idempotency_key": key})
        view = farm.wait([refused], timeout=60)[0]
        assert view.status is JobStatus.FAILED
        assert view.error is not None and f"is held by job {holder}" in view.error
        assert sim_stats()["messages_requests"] == 0  # it made no call
        assert farm.status(holder).status is JobStatus.QUEUED  # untouched
    finally:
        farm.cancel(holder)  # no worker here takes haiku-simple: later tests' may
