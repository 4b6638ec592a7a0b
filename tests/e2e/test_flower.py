"""Flower, as an operator uses it: `farm flower` behind basic auth, next to real workers.

It shows each job's real outcome (a dead job is a failure with its error class, a cancelled
one revoked, a repeated delivery changes neither), lists every queue of the farm, the
dead-letter queue included, with the lengths Redis holds, and never shows a prompt."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from celeryconfig import farm_retry_policies
from farm.app import send_job
from farm.broker.layout import (
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_TASK,
    INTAKE_QUEUE,
    celery_priority,
    ids_in_redis,
    queue_keys,
)
from farm.client import Farm, validate
from farm.jobs import JobStatus, Priority
from farm.reliability.policies import policy_for
from farm.store import jobs as store
from farm.worker.outcome import JobFailed
from tests_e2e import wait_for_each, wait_until, with_status
from tests_support import free_port, wait_port

AUTH = ("ops", "s3cret-pw")
READY_STATES = {"SUCCESS", "FAILURE", "REVOKED"}
SERVED = {"haiku-simple", "sonnet-complex", INTAKE_QUEUE}  # the `workers` fixture's queues


class Flower:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: Any) -> httpx2.Response:
        return httpx2.get(f"{self.base}{path}", params=params, auth=AUTH, timeout=10)

    def task(self, job: object) -> dict[str, Any]:
        response = self.get(f"/api/task/info/{job}")
        return {} if response.status_code == 404 else dict(response.json())

    def final(self, jobs: list[uuid.UUID], timeout: float = 30) -> dict[str, dict[str, Any]]:
        """Each task's info once Flower holds a final state for it (success, failure,
        revoked): the last event of the job's last delivery has arrived."""
        infos: dict[str, dict[str, Any]] = {}

        def pending() -> str | None:
            infos.update({str(job): self.task(job) for job in jobs})
            open_ = {job: info.get("state") for job, info in infos.items()
                     if info.get("state") not in READY_STATES}
            return f"no final state in Flower yet: {open_}" if open_ else None

        wait_until(pending, timeout, interval=0.3)
        return infos


@pytest.fixture(scope="module")
def flower(workers: list[Path], e2e_env: dict[str, str]) -> Iterator[Flower]:
    """`farm flower` on the farm's broker, subscribed to the workers' events and knowing
    which queues they consume."""
    port = free_port()
    env = {**e2e_env, "FARM_FLOWER_USER": AUTH[0], "FARM_FLOWER_PASSWORD": AUTH[1]}
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "flower", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Flower(f"http://127.0.0.1:{port}")
    try:
        wait_port(port, timeout=60)

        def no_worker_event() -> str | None:
            # Flower's worker list holds the workers it has had events (heartbeats) from:
            # once there, it is subscribed before any job of the test runs
            seen = client.get("/workers", json=1).json()["data"]
            return None if len(seen) == len(workers) else f"events from {len(seen)} workers"

        wait_until(no_worker_event, timeout=30, interval=0.5)
        yield client
    finally:
        proc.terminate()
        proc.wait(20)


def test_flower_needs_credentials_and_never_shows_prompts(
    flower: Flower, farm: Farm, e2e_env: dict[str, str], api_key: str
) -> None:
    refused = subprocess.run([sys.executable, "-m", "farm.cli", "flower"], env=e2e_env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "FARM_FLOWER_USER" in refused.stderr
    secret_prompt = "PROMPT-MARKER-7f3a what is the airspeed of a swallow?"
    job = farm.submit(prompt=secret_prompt)
    assert farm.wait([job], timeout=30)[0].status is JobStatus.SUCCEEDED
    assert httpx2.get(f"{flower.base}/api/tasks").status_code == 401
    body = ""

    def task_not_shown() -> str | None:
        nonlocal body
        body = flower.get("/api/tasks").text
        return None if str(job) in body else f"job {job} not in Flower's task list"

    wait_until(task_not_shown, timeout=20, interval=0.5)  # the task is visible …
    assert "PROMPT-MARKER-7f3a" not in body  # … its prompt is not
    assert api_key not in body


def _cancelled_before_delivery(farm: Farm) -> uuid.UUID:
    """A job cancelled before any worker took its message: its row, cancelled, then its
    message published (as a message published just before `farm cancel`)."""
    [(request, route)] = validate([{"prompt": "never run me", "complexity": "simple"}],
                                  farm.settings)
    job = uuid.uuid4()
    with farm.db.begin() as conn:
        store.insert_jobs(conn, [store.new_job_row(job, request, route)])
    assert farm.cancel(job) is JobStatus.CANCELLED
    send_job(farm.app, job, route.queue, request.priority)
    return job


def test_flower_shows_each_job_s_real_outcome(flower: Flower, farm: Farm, workers: list[Path],
                                              broker_url: str) -> None:
    dead = farm.submit(prompt="Say hi [[sim:status=529]] PROMPT-MARKER-9c1d",
                       complexity="simple")
    ok = farm.submit(prompt="Say hi", complexity="simple")
    running = farm.submit(prompt="[[sim:latency=3]] cancel me while I run", complexity="simple")
    wait_until(lambda: None if with_status(farm.engine, [running], JobStatus.RUNNING.value)
               else f"job {running} not running yet", timeout=20, interval=0.05)
    assert farm.cancel(running) is JobStatus.CANCELLED
    unrun = _cancelled_before_delivery(farm)
    views = {v.id: v for v in farm.wait([dead, ok, running], timeout=90)}
    assert views[dead].status is JobStatus.DEAD and views[ok].status is JobStatus.SUCCEEDED
    wait_for_each(workers, [unrun], "job {id} is not runnable")
    infos = flower.final([dead, ok, running, unrun])

    # the dead job: a failure, with its final status and error class, and nothing else
    policy = policy_for(farm_retry_policies, views[dead].queue)
    failed = infos[str(dead)]
    assert failed["state"] == "FAILURE"
    assert failed["exception"] == repr(JobFailed(str(dead), "dead", "overloaded"))
    assert failed["retries"] == policy.max_attempts - 1  # RETRY twice, by the policy
    assert "PROMPT-MARKER-9c1d" not in json.dumps(failed)
    assert "Overloaded" not in json.dumps(failed)  # the provider's message stays in Postgres
    assert infos[str(ok)]["state"] == "SUCCESS"
    # a cancelled job is revoked, whether it was running or not yet taken
    assert infos[str(running)]["state"] == "REVOKED"
    assert infos[str(unrun)]["state"] == "REVOKED"

    # the failure was acknowledged like a success: neither message is left in Redis (queued,
    # or taken and unacknowledged), and Celery did not retry the failure itself
    client = redis.Redis.from_url(broker_url)

    def still_in_redis() -> str | None:
        left = {dead, ok} & (ids_in_redis(client, {views[dead].queue}, scan_max=100_000)
                             or set())
        return f"messages still in Redis: {left}" if left else None

    try:
        wait_until(still_in_redis, timeout=10)
    finally:
        client.close()
    assert farm.status(dead).attempts == policy.max_attempts

    # the same messages delivered once more: acknowledged unrun, and Flower still shows each
    # job's outcome (a repeated delivery of a succeeded job is no failure, of a dead one no
    # success)
    last = {job: max(infos[str(job)].get(k) or 0 for k in ("succeeded", "failed"))
            for job in (dead, ok)}
    for job in (dead, ok):
        send_job(farm.app, job, views[job].queue, Priority.NORMAL)
    wait_for_each(workers, [dead, ok], "job {id} is not runnable")

    def repeat_not_seen() -> str | None:
        again = {job: flower.task(job) for job in (dead, ok)}
        behind = [job for job, info in again.items()
                  if max(info.get(k) or 0 for k in ("succeeded", "failed")) <= last[job]]
        infos.update({str(job): info for job, info in again.items()})
        return f"no final event of the repeated delivery of {behind}" if behind else None

    wait_until(repeat_not_seen, timeout=20, interval=0.3)
    assert infos[str(dead)]["state"] == "FAILURE"
    assert infos[str(ok)]["state"] == "SUCCESS"


def _lengths(client: redis.Redis, queue: str) -> dict[str, int]:
    return {key: int(client.llen(key)) for key in queue_keys(queue)}


def test_flower_lists_every_queue_with_its_length(flower: Flower, farm: Farm,
                                                  broker_url: str) -> None:
    # the workers consume their queues, not the dead-letter queue: Flower knows it from them
    def consumed() -> set[str]:
        workers = flower.get("/api/workers", refresh=1).json()
        return {q["name"] for info in workers.values() for q in info.get("active_queues", [])}

    wait_until(lambda: None if consumed() == SERVED else f"consumed: {consumed()}",
               timeout=20, interval=0.5)
    client = redis.Redis.from_url(broker_url)
    sent: list[str] = []
    try:
        before = _lengths(client, DEAD_LETTER_QUEUE)
        # dead letters at every priority: kombu keeps one Redis list per priority step
        for priority in (Priority.HIGH, Priority.NORMAL, Priority.NORMAL, Priority.LOW,
                         Priority.LOW, Priority.LOW):
            sent.append(farm.app.send_task(
                DEAD_LETTER_TASK, queue=DEAD_LETTER_QUEUE, priority=celery_priority(priority),
                kwargs={"job_id": str(uuid.uuid4()), "error_class": "flower-test"}).id)
        after = _lengths(client, DEAD_LETTER_QUEUE)
        assert all(after[key] > before[key] for key in after), (before, after)  # every list
        in_redis = sum(after.values())
        assert in_redis == sum(before.values()) + len(sent)

        response = flower.get("/api/queues/length")
        assert response.status_code == 200, response.text
        lengths = {q["name"]: q["messages"] for q in response.json()["active_queues"]}
        assert set(lengths) == SERVED | {DEAD_LETTER_QUEUE}
        assert lengths[DEAD_LETTER_QUEUE] == in_redis

        page = flower.get("/broker")
        assert page.status_code == 200 and "not supported" not in page.text
        for queue in SERVED | {DEAD_LETTER_QUEUE}:
            assert f"<td>{queue}</td>" in page.text
    finally:
        for key in queue_keys(DEAD_LETTER_QUEUE):  # take back what this test put there
            for raw in client.lrange(key, 0, -1):
                if any(task_id.encode() in raw for task_id in sent):
                    client.lrem(key, 1, raw)
        client.close()
