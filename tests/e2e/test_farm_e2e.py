"""The farm end to end: client → router → Redis → real celery workers → SDK → simulator →
Postgres accounting."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery
from sqlalchemy import text

from celeryconfig import farm_retry_policies
from farm.client import Farm
from farm.costs.pricing import default_pricebook
from farm.jobs import JobStatus, Usage
from farm.reliability.policies import policy_for
from tests_e2e import (
    ended,
    log_text,
    wait_for_each,
    wait_for_text,
    wait_until,
    with_status,
)

Stats = Callable[[], dict[str, object]]
HAIKU_SLOTS = 30  # the haiku worker's concurrency (the `workers` fixture)


def test_mixed_jobs_are_routed_run_and_accounted(workers: list[Path], farm: Farm,
                                                 sim_stats: Stats) -> None:
    jobs = [{"prompt": f"What is {i} + {i}?", "tenant": "a"} for i in range(30)]
    jobs += [{"prompt": f"Our checkout service's p99 went from 180 ms to 2.4 s after deploy {i}; "
              "CPU is flat and the database pool shows 40 waiting connections. What is the "
              "likely cause, and how do we confirm it?", "max_tokens": 2000, "tenant": "b"}
             for i in range(20)]
    ids = farm.submit_many(jobs)
    views = farm.wait(ids, timeout=120)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * len(ids)
    assert {v.queue for v in views[:30]} == {"haiku-simple"}
    assert {v.queue for v in views[30:]} == {"sonnet-complex"}
    prices = default_pricebook()
    with farm.engine.connect() as conn:
        for view in views:
            assert view.attempts == 1
            assert view.output_tokens > 0 and view.input_tokens > 0
            assert view.served_model == view.model
            usage = Usage(input_tokens=view.input_tokens, output_tokens=view.output_tokens)
            assert view.cost_usd == prices.cost(view.model, usage)
            assert isinstance(view.cost_usd, Decimal)
            rows = conn.execute(
                text("select outcome, request_id, queue from attempts where job_id = :j"),
                {"j": view.id},
            ).all()
            assert len(rows) == 1 and rows[0].outcome == "ok"
            assert rows[0].request_id and rows[0].request_id.startswith("req_")
            assert rows[0].queue == view.queue
    # exactly one provider call per job
    assert sim_stats()["messages_requests"] == len(ids)
    report = {(r.queue, r.model): r for r in farm.report()}
    assert report[("haiku-simple", "claude-haiku-4-5")].succeeded >= 30


def test_plain_send_task_from_a_service_without_the_farm(workers: list[Path], farm: Farm,
                                                         broker_url: str) -> None:
    # a bare Celery app: only the broker URL and the router, named by string
    service = Celery("other-service", broker=broker_url, set_as_current=False)
    service.conf.task_routes = ("farm.routing.router.route_task",)
    service.conf.task_serializer = "json"
    complex_prompt = ("Design a multi-region architecture for a payments system, analyze "
                      "the trade-offs step by step and outline a migration plan.")
    try:
        simple = service.send_task("farm.run_job", kwargs={"request": {"prompt": "Hi there?"}})
        hard = service.send_task(
            "farm.run_job", kwargs={"request": {"prompt": complex_prompt, "max_tokens": 4000}}
        )
        bad = service.send_task("farm.run_job", kwargs={"request": {"max_tokens": 5}})
    finally:
        service.close()
    views = farm.wait([simple.id, hard.id, bad.id], timeout=60)
    by_id = {str(v.id): v for v in views}
    assert by_id[simple.id].status is JobStatus.SUCCEEDED
    assert by_id[simple.id].queue == "haiku-simple"
    assert by_id[hard.id].status is JobStatus.SUCCEEDED
    assert by_id[hard.id].queue == "sonnet-complex"
    assert by_id[bad.id].status is JobStatus.FAILED
    assert "prompt" in (by_id[bad.id].error or "")


def test_malformed_messages_do_not_stop_the_worker(workers: list[Path], farm: Farm,
                                                   broker_url: str) -> None:
    app = Celery("garbage", broker=broker_url, set_as_current=False)
    unknown = uuid.uuid4()
    try:
        app.send_task("farm.run_job", kwargs={"job_id": "not-a-uuid"}, queue="haiku-simple")
        app.send_task("farm.run_job", kwargs={"job_id": str(unknown)}, queue="haiku-simple")
        odd = app.send_task("farm.run_job", kwargs={"request": {"prompt": "x"}, "colour": 1},
                            queue="haiku-simple")
    finally:
        app.close()
    assert farm.wait([odd.id], timeout=30)[0].status is JobStatus.FAILED
    assert "colour" in (farm.status(odd.id).error or "")
    # the worker took the two others and dropped them, saying why …
    wait_for_text([workers[0]], "job_id 'not-a-uuid' is not a UUID",
                  f"job {unknown} is not runnable")
    # … and still serves
    ok = farm.submit(prompt="Still alive?")
    assert farm.wait([ok], timeout=30)[0].status is JobStatus.SUCCEEDED


def test_fatal_errors_fail_after_one_call_and_retryable_ones_go_dead(
    workers: list[Path], farm: Farm, sim_stats: Stats
) -> None:
    bad = farm.submit(prompt="[[sim:status=400]] reject me")
    overloaded = farm.submit(prompt="[[sim:status=529]] always overloaded",
                             complexity="simple")
    views = {v.id: v for v in farm.wait([bad, overloaded], timeout=90)}
    assert views[bad].status is JobStatus.FAILED
    assert views[bad].attempts == 1
    assert "bad_request" in (views[bad].error or "")
    policy = policy_for(farm_retry_policies, views[overloaded].queue)
    assert views[overloaded].status is JobStatus.DEAD
    assert views[overloaded].attempts == policy.max_attempts
    with farm.engine.connect() as conn:
        outcomes = conn.execute(
            text("select outcome from attempts where job_id = :j order by attempt"),
            {"j": overloaded},
        ).scalars().all()
    assert outcomes == ["overloaded"] * policy.max_attempts
    assert sim_stats()["messages_requests"] == 1 + policy.max_attempts  # `bad`: one call


def test_cancel_queued_and_running_jobs(workers: list[Path], farm: Farm,
                                        sim_stats: Stats) -> None:
    # fill every slot of the haiku worker with 3-second calls
    blockers = farm.submit_many([{"prompt": f"[[sim:latency=3]] hold {i}",
                                  "complexity": "simple"} for i in range(HAIKU_SLOTS)])

    def not_all_running() -> str | None:
        n = len(with_status(farm.engine, blockers, JobStatus.RUNNING.value))
        return None if n == len(blockers) else f"{n} of {len(blockers)} blockers running"

    wait_until(not_all_running, timeout=20, interval=0.1)
    queued = farm.submit(prompt="never run me", complexity="simple")
    running = blockers[0]
    assert farm.cancel(queued) is JobStatus.CANCELLED
    assert farm.cancel(running) is JobStatus.CANCELLED
    farm.wait(blockers, timeout=60)
    # a slot frees, the worker takes the cancelled job's message and acknowledges it unrun;
    # the cancelled running one's task ends once its call is over and recorded (Flower shows
    # both as revoked: tests/e2e/test_flower.py)
    wait_for_each(workers[:1], [queued], "job {id} is not runnable (cancelled)")
    wait_until(lambda: None if str(running) in ended(log_text(workers[0]), "ignored") else
               f"the task of the cancelled running job {running} has not ended", timeout=30)
    q, r = farm.status(queued), farm.status(running)
    assert q.status is JobStatus.CANCELLED and q.attempts == 0 and q.started_at is None
    assert r.status is JobStatus.CANCELLED
    assert r.response_text  # the late result is kept, not reported as success
    assert sim_stats()["messages_requests"] == len(blockers)  # none for the queued one


def _bodies(value: object) -> list[str]:
    """The bodies of the kombu messages inside a value read from Redis, decoded: they travel
    base64-encoded, so a search of the raw value would find no prompt even if one were sent."""
    if isinstance(value, list):
        return [body for item in value for body in _bodies(item)]
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("body"), str) and \
            value.get("properties", {}).get("body_encoding") == "base64":
        return [base64.b64decode(value["body"]).decode(errors="replace")]
    return [body for item in value.values() for body in _bodies(item)]


def _broker_dump(broker_url: str) -> list[str]:
    """Every value in the broker's Redis, each followed by the decoded bodies of the
    messages it holds (queues are lists, unacknowledged messages a hash)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    values: list[Any] = []
    try:
        for key in client.keys("*"):
            kind = client.type(key)
            if kind == b"list":
                values += client.lrange(key, 0, -1)
            elif kind == b"hash":
                values += client.hvals(key)
            elif kind == b"string":
                values.append(client.get(key))
            elif kind == b"zset":
                values += client.zrange(key, 0, -1)
            elif kind == b"set":
                values += list(client.smembers(key))
    finally:
        client.close()
    entries: list[str] = []
    for raw in values:
        entries.append(str(raw))
        with contextlib.suppress(ValueError):  # not JSON: not a message
            entries += _bodies(json.loads(raw))
    return entries


def test_secrets_never_reach_logs_or_database(workers: list[Path], farm: Farm,
                                              database_url: str, broker_url: str,
                                              api_key: str) -> None:
    # a retried job and a dead-lettered one: the workers publish messages of their own
    retried = farm.submit(prompt="[[sim:status=529]] SECRET-PROMPT-41 overloaded")
    other = farm.submit(prompt="one more SECRET-PROMPT-41")
    dumps: list[str] = []
    job_message = f'"job_id": "{retried}"'  # in a decoded body only

    def job_message_not_seen() -> str | None:
        dumps.extend(_broker_dump(broker_url))
        return None if any(job_message in entry for entry in dumps) else (
            f"no message of job {retried} read from Redis yet")

    wait_until(job_message_not_seen, timeout=30, interval=0.05)
    farm.wait([retried, other], timeout=60)
    dumps.extend(_broker_dump(broker_url))
    # the job, dead, is on its dead-letter queue (no worker consumes it): that message too
    assert any(job_message in entry and "error_class" in entry for entry in dumps)
    messages = "\n".join(dumps)
    assert api_key not in messages
    assert "SECRET-PROMPT-41" not in messages  # only job ids travel
    for log in workers:
        assert api_key not in log.read_text()
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        dump = "".join(str(r) for r in conn.execute("select * from jobs").fetchall())
        dump += "".join(str(r) for r in conn.execute("select * from attempts").fetchall())
    assert api_key not in dump


def test_worker_without_api_key_refuses_to_start(e2e_env: dict[str, str]) -> None:
    env = {k: v for k, v in e2e_env.items() if k != "ANTHROPIC_API_KEY"}
    for argv in (
        [sys.executable, "-m", "farm.cli", "worker", "-Q", "haiku-simple"],
        [sys.executable, "-m", "celery", "-A", "farm", "worker", "-Q", "haiku-simple",
         "-P", "threads"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert "ANTHROPIC_API_KEY is not set" in done.stdout + done.stderr

