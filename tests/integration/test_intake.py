"""A job sent inline (plain send_task) meets Postgres at intake, in the worker's task code
against a real database: one the database cannot take now comes back later, request and
all; one Postgres cannot store, or an invalid one, is recorded as failed and dead-lettered.
No prompt reaches the log, the error columns or the retry."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Retry

from celeryconfig import farm_retry_policies
from farm.app import create_app
from farm.costs.pricing import default_pricebook
from farm.jobs import holds_nul
from farm.reliability.leases import Running
from farm.services import free_port
from farm.settings import Settings
from farm.store import jobs as store
from farm.store.db import Database, dict_one
from farm.worker import runtime as rt
from farm.worker import tasks
from farm.worker.outcome import JobFailed

PROMPT = "INTAKE-SECRET-PROMPT"
Deliver = Callable[..., dict[str, Any]]
App = tuple[Celery, list[Any]]  # the app and the runtime its tasks use


@pytest.fixture(scope="module")
def worker_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The farm's app on an in-memory broker (what the task publishes, retries and dead
    letters, goes nowhere else) with the farm's tasks, and the runtime they use."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("intake")),
                     broker_url="memory://")
    runtime: list[Any] = [None]
    tasks.register(app, lambda: runtime[0])
    yield app, runtime
    app.close()


def _deliverer(worker_app: App, db: Database, tmp_path: Path) -> Deliver:
    app, current = worker_app
    # what intake uses of a worker's runtime: settings, the database, the prices (the cost
    # cap), the retry policies
    runtime = rt.Runtime(settings=Settings(data_dir=tmp_path), db=db, client=None,
                         prices=default_pricebook(), policies=farm_retry_policies,
                         running=Running(), stop=threading.Event(), hold=None, gate=None)
    current[0] = runtime
    task: Task = app.tasks["farm.run_job"]

    def deliver(job_id: uuid.UUID, request: Any, retries: int = 0) -> dict[str, Any]:
        """One delivery of an inline job's message on farm-intake, as a worker runs it."""
        task.push_request(id=str(job_id), args=[], kwargs={"request": request},
                          delivery_info={"exchange": "farm", "routing_key": "farm-intake"},
                          retries=retries, called_directly=False, is_eager=False)
        try:
            return tasks.execute(task, runtime, None, request, {})
        finally:
            task.pop_request()

    return deliver


def _row(db: Database, job_id: uuid.UUID) -> dict[str, Any]:
    with db.connect() as conn:
        job = dict_one(conn, "select status, request, error from jobs where id = %(j)s",
                       {"j": job_id})
        dead = dict_one(conn, "select error_class, error_message from dead_letters "
                              "where job_id = %(j)s", {"j": job_id})
    assert job is not None and dead is not None
    return {**job, **{f"dead_{k}": v for k, v in dead.items()}}


def test_an_inline_job_the_database_cannot_take_comes_back_later(
    worker_app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # nothing listens there: every statement fails to connect
    down = Database(f"postgresql://farm:pw@127.0.0.1:{free_port()}/farm", ping_s=None)
    deliver = _deliverer(worker_app, down, tmp_path)
    request = {"prompt": f"{PROMPT} what is 2 + 2?"}
    job = uuid.uuid4()
    try:
        with caplog.at_level(logging.INFO), pytest.raises(Retry) as first:
            deliver(job, request)
        with pytest.raises(Retry) as later:
            deliver(job, request, retries=3)
    finally:
        down.close()
    # the message comes back, with the request (there is no row to run it from), later
    assert first.value.sig.kwargs["request"] == request
    assert first.value.when == 1.0 and later.value.when == 8.0
    # … and says why, without the database error's text or its context
    assert f"job {job}: the database cannot record the inline job (OperationalError" in (
        caplog.text)
    assert first.value.__suppress_context__ and first.value.exc is None
    assert PROMPT not in caplog.text


def test_an_inline_job_postgres_cannot_store_fails_without_its_text(
    worker_app: App, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a row Postgres refuses although the job passed validation (here: a NUL slipped in);
    # the server's error quotes the data (its CONTEXT line), so its text must go nowhere
    made = store.new_job_row

    def with_nul(*args: Any) -> dict[str, Any]:
        row = made(*args)
        return {**row, "request": {**row["request"], "prompt": row["request"]["prompt"] + "\0"}}

    monkeypatch.setattr(store, "new_job_row", with_nul)
    deliver = _deliverer(worker_app, db, tmp_path)
    request = {"prompt": f"{PROMPT} what is 2 + 2?"}
    job = uuid.uuid4()
    with caplog.at_level(logging.INFO), pytest.raises(JobFailed) as ended:
        deliver(job, request)
    assert (ended.value.job_id, ended.value.status, ended.value.error_class) == (
        str(job), "failed", "invalid")
    row = _row(db, job)
    assert row["status"] == "failed" and row["request"] == request  # as sent: storable
    assert row["error"] == ("the job could not be stored: UntranslatableCharacter "
                            "(SQLSTATE 22P05)")
    assert (row["dead_error_class"], row["dead_error_message"]) == ("invalid", row["error"])
    assert PROMPT not in caplog.text


@pytest.mark.parametrize(("request_", "named"), [
    ({"prompt": f"{PROMPT} \0 a NUL"}, "prompt: prompt holds a NUL character"),
    ({"prompt": "x", "metadata": {"k\0": "v"}}, "metadata: metadata holds a NUL"),
    ({"prompt": PROMPT + "x" * 800_000}, "prompt: String should have at most 800000 characters"),
    ({"prompt": [PROMPT]}, "prompt: Input should be a valid string"),
    # over its cost cap: the figures, as a submit refuses it
    ({"prompt": PROMPT, "complexity": "simple", "max_tokens": 20_000, "max_cost_usd": "0.05"},
     "max_cost_usd: worst case $0.1000 (21 input tokens at $1.00/M + 20,000 output tokens "
     "at $5.00/M on claude-haiku-4-5 = $0.1000) exceeds the job's cost cap $0.0500"),
])
def test_an_invalid_inline_job_is_recorded_failed_naming_the_field_not_the_prompt(
    worker_app: App, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    request_: dict[str, Any], named: str,
) -> None:
    deliver = _deliverer(worker_app, db, tmp_path)
    job = uuid.uuid4()
    with caplog.at_level(logging.INFO), pytest.raises(JobFailed) as ended:
        deliver(job, request_)
    assert ended.value.status == "failed"
    row = _row(db, job)
    assert row["status"] == "failed" and row["error"].startswith(f"invalid job: {named}")
    assert row["dead_error_message"] == row["error"]
    # the request is kept when Postgres can store it, left out when it cannot (a NUL)
    assert row["request"] == ({"not_stored": "UntranslatableCharacter (SQLSTATE 22P05)"}
                              if holds_nul(request_) else request_)
    assert PROMPT not in row["error"] and PROMPT not in caplog.text
