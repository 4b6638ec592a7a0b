"""A service with only Celery installed (a virtualenv without the farm) sends jobs: the
README's snippet, run as printed, gets its job routed, run and recorded, with the prompt
in none of the task events a farm worker sends (what Flower shows); a job sent to a queue
no farm worker consumes is moved to the intake queue by the sweep instead of vanishing."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import log_text, wait_for_text

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = re.compile(r"<!-- plain-celery: begin[^>]*-->\s*```python\n(.*?)```\s*"
                     r"<!-- plain-celery: end -->", re.DOTALL)


@pytest.fixture(scope="module")
def e2e_env(e2e_env: dict[str, str]) -> dict[str, str]:
    """This module's workers (the `workers` fixture) run the cluster's sweep every 2 s
    instead of every 30 s (FARM_ORPHAN_SWEEP_S): the stray of the last test is moved
    within seconds."""
    return {**e2e_env, "FARM_ORPHAN_SWEEP_S": "2"}


@pytest.fixture(scope="session")
def celery_only_python() -> Path:
    """The python of a virtualenv holding celery[redis] (the farm's version) and not the
    farm; made once under .farm-test/ and reused."""
    venv = ROOT / ".farm-test" / f"celery-only-{version('celery')}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"celery[redis]=={version('celery')}"], check=True, timeout=600)
        (venv / ".ready").touch()
    no_farm = subprocess.run([str(python), "-c", "import farm.client"], cwd=venv,
                             capture_output=True, text=True)
    assert no_farm.returncode != 0 and "No module named 'farm'" in no_farm.stderr
    return python


@pytest.fixture
def events(e2e_env: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event on the farm's broker while the test runs (what Flower sees)."""
    seen: list[dict[str, Any]] = []
    app = Celery(broker=e2e_env["FARM_BROKER_URL"], set_as_current=False)
    ready, done = threading.Event(), threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            while not done.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield seen
    finally:
        done.set()
        thread.join(10)
        app.close()


def events_of(events: list[dict[str, Any]], job_id: str, wanted: set[str],
              timeout: float = 15.0) -> list[dict[str, Any]]:
    """The job's events once all the ``wanted`` types have arrived (a worker publishes its
    events a batch at a time, FARM_EVENTS_FLUSH_S: they may come after the job's row says
    it ended), or what came within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [e for e in list(events) if e.get("uuid") == job_id]
        if wanted <= {e["type"] for e in mine} or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def run_as_service(python: Path, code: str, env: dict[str, str], tmp_path: Path) -> str:
    script = tmp_path / "service.py"
    script.write_text(code)
    service_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), str(script)], cwd=tmp_path, env=service_env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_readme_snippet_runs_as_printed(
        workers: list[Path], farm: Farm, celery_only_python: Path, e2e_env: dict[str, str],
        events: list[dict[str, Any]], tmp_path: Path) -> None:
    found = SNIPPET.findall((ROOT / "README.md").read_text())
    assert len(found) == 1, "the README's plain-Celery snippet is marked once"
    prompt = "Translate 'good morning' into Spanish."
    assert prompt in found[0]
    job_id = run_as_service(celery_only_python, found[0], e2e_env, tmp_path)
    view = farm.wait([uuid.UUID(job_id)], timeout=90)[0]
    assert view.status is JobStatus.SUCCEEDED and view.response_text
    assert view.queue == "haiku-simple" and view.tenant == "svc"  # routed by the worker
    mine = events_of(events, job_id, {"task-received", "task-succeeded"})
    assert {"task-received", "task-succeeded"} <= {e["type"] for e in mine}, mine
    shown = repr(mine)
    assert "Spanish" not in shown and "good morning" not in shown
    # the worker's own redaction, not the sender's kwargsrepr ("<farm job>"): the request
    # shown as its size
    shown_kwargs = [str(e.get("kwargs")) for e in mine if e["type"] == "task-received"]
    assert shown_kwargs and all("'request': '<redacted" in k for k in shown_kwargs), shown_kwargs


def test_a_raw_send_task_without_redaction_still_keeps_the_prompt_out_of_events(
        workers: list[Path], farm: Farm, celery_only_python: Path, e2e_env: dict[str, str],
        events: list[dict[str, Any]], tmp_path: Path) -> None:
    code = ("import os\nfrom celery import Celery\n"
            "app = Celery(broker=os.environ['FARM_BROKER_URL'])\n"
            "r = app.send_task('farm.run_job', queue='farm-intake', kwargs={'request': "
            "{'prompt': 'What is the capital of Secretland?'}})\nprint(r.id)\n")
    job_id = run_as_service(celery_only_python, code, e2e_env, tmp_path)
    assert farm.wait([uuid.UUID(job_id)], timeout=90)[0].status is JobStatus.SUCCEEDED
    mine = events_of(events, job_id, {"task-received"})
    assert any(e["type"] == "task-received" for e in mine), mine
    assert "Secretland" not in repr(mine)


def test_a_job_sent_to_a_queue_nobody_consumes_is_moved_to_intake(
        workers: list[Path], farm: Farm, celery_only_python: Path, e2e_env: dict[str, str],
        tmp_path: Path) -> None:
    """No queue named: Celery's default queue `celery`, which no farm worker consumes."""
    code = ("import os\nfrom celery import Celery\n"
            "app = Celery(broker=os.environ['FARM_BROKER_URL'])\n"
            "r = app.send_task('farm.run_job', kwargs={'request': {'prompt': 'Hi there?'}})\n"
            "print(r.id)\n")
    job_id = run_as_service(celery_only_python, code, e2e_env, tmp_path)
    # the cluster's sweep runs every FARM_ORPHAN_SWEEP_S (30 s by default, 2 s here) on one
    # worker
    wait_for_text(workers, "farm.run_job message(s) from queue 'celery'", timeout=90)
    view = farm.wait([uuid.UUID(job_id)], timeout=90)[0]
    assert view.status is JobStatus.SUCCEEDED and view.queue == "haiku-simple"
    assert "moved 1 farm.run_job message(s) from queue 'celery'" in log_text(*workers)
