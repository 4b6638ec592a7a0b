"""The farm end to end: client → router → Redis → real celery workers → SDK → simulator →
Postgres accounting."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import psycopg
from celery import Celery
from sqlalchemy import text

from farm.client import Farm
from farm.costs.pricing import default_pricebook
from farm.jobs import JobStatus, Usage

Stats = Callable[[], dict[str, object]]


def test_mixed_jobs_are_routed_run_and_accounted(workers: list[Path], farm: Farm,
                                                 sim_stats: Stats) -> None:
    jobs = [{"prompt": f"What is {i} + {i}?", "tenant": "a"} for i in range(30)]
    jobs += [{"prompt": f"Debug this step by step and explain:\n```python\ndef f{i}(x):\n"
              f"    return x / 0\n```", "max_tokens": 2000, "tenant": "b"} for i in range(20)]
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
    service.conf.task_routes = ("farm.routing.route_task",)
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
    try:
        app.send_task("farm.run_job", kwargs={"job_id": "not-a-uuid"}, queue="haiku-simple")
        app.send_task("farm.run_job", kwargs={"job_id": str(uuid.uuid4())}, queue="haiku-simple")
        odd = app.send_task("farm.run_job", kwargs={"request": {"prompt": "x"}, "colour": 1},
                            queue="haiku-simple")
    finally:
        app.close()
    assert farm.wait([odd.id], timeout=30)[0].status is JobStatus.FAILED
    assert "colour" in (farm.status(odd.id).error or "")
    # the worker still serves
    ok = farm.submit(prompt="Still alive?")
    assert farm.wait([ok], timeout=30)[0].status is JobStatus.SUCCEEDED
    log = workers[0].read_text()
    assert "not a UUID" in log


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
    assert views[overloaded].status is JobStatus.DEAD
    assert views[overloaded].attempts == 3
    with farm.engine.connect() as conn:
        outcomes = conn.execute(
            text("select outcome from attempts where job_id = :j order by attempt"),
            {"j": overloaded},
        ).scalars().all()
    assert outcomes == ["overloaded"] * 3
    assert sim_stats()["messages_requests"] == 4


def test_cancel_queued_and_running_jobs(workers: list[Path], farm: Farm,
                                        sim_stats: Stats) -> None:
    # fill every slot of the haiku worker (concurrency 30) with 3-second calls
    blockers = farm.submit_many(
        [{"prompt": f"[[sim:latency=3]] hold {i}", "complexity": "simple"} for i in range(30)]
    )
    deadline = time.monotonic() + 20
    while sum(v.status is JobStatus.RUNNING for v in farm.statuses(blockers)) < 30:
        assert time.monotonic() < deadline, "blockers did not start"
        time.sleep(0.1)
    queued = farm.submit(prompt="never run me", complexity="simple")
    running = blockers[0]
    assert farm.cancel(queued) is JobStatus.CANCELLED
    assert farm.cancel(running) is JobStatus.CANCELLED
    farm.wait(blockers, timeout=60)
    time.sleep(1.0)  # the queued one is consumed after the blockers finish, then skipped
    q, r = farm.status(queued), farm.status(running)
    assert q.status is JobStatus.CANCELLED and q.attempts == 0 and q.started_at is None
    assert r.status is JobStatus.CANCELLED
    assert r.response_text  # the late result is kept, not reported as success
    assert sim_stats()["messages_requests"] == 30


def _broker_dump(broker_url: str) -> str:
    import redis

    client = redis.Redis.from_url(broker_url)
    parts: list[str] = []
    try:
        for key in client.keys("*"):
            kind = client.type(key)
            if kind == b"list":
                parts += [str(v) for v in client.lrange(key, 0, -1)]
            elif kind == b"hash":
                parts += [str(v) for v in client.hvals(key)]
            elif kind == b"string":
                parts.append(str(client.get(key)))
            elif kind == b"zset":
                parts += [str(v) for v in client.zrange(key, 0, -1)]
            elif kind == b"set":
                parts += [str(v) for v in client.smembers(key)]
    finally:
        client.close()
    return "\n".join(parts)


def test_secrets_never_reach_logs_or_database(workers: list[Path], farm: Farm,
                                              database_url: str, broker_url: str,
                                              api_key: str) -> None:
    # a retried job and a dead-lettered one: the workers publish messages of their own
    retried = farm.submit(prompt="[[sim:status=529]] SECRET-PROMPT-41 overloaded")
    farm.submit(prompt="one more SECRET-PROMPT-41")
    time.sleep(0.5)
    messages = _broker_dump(broker_url)
    farm.wait([retried], timeout=60)
    messages += _broker_dump(broker_url)
    assert "dead-letter" in messages or "farm.run_job" in messages  # the dump saw messages
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


def test_flower_needs_credentials_and_never_shows_prompts(
    workers: list[Path], farm: Farm, e2e_env: dict[str, str], api_key: str
) -> None:
    import httpx2

    from tests_support import free_port, wait_port

    refused = subprocess.run([sys.executable, "-m", "farm.cli", "flower"], env=e2e_env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "FARM_FLOWER_USER" in refused.stderr
    port = free_port()
    env = {**e2e_env, "FARM_FLOWER_USER": "ops", "FARM_FLOWER_PASSWORD": "s3cret-pw"}
    flower = subprocess.Popen([sys.executable, "-m", "farm.cli", "flower", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        time.sleep(2)  # let Flower subscribe to events before the job runs
        secret_prompt = "PROMPT-MARKER-7f3a what is the airspeed of a swallow?"
        job = farm.submit(prompt=secret_prompt)
        assert farm.wait([job], timeout=30)[0].status is JobStatus.SUCCEEDED
        base = f"http://127.0.0.1:{port}"
        assert httpx2.get(f"{base}/api/tasks").status_code == 401
        deadline = time.monotonic() + 20
        body = ""
        while time.monotonic() < deadline and str(job) not in body:
            body = httpx2.get(f"{base}/api/tasks", auth=("ops", "s3cret-pw")).text
            time.sleep(0.5)
        assert str(job) in body  # the task is visible …
        assert "PROMPT-MARKER-7f3a" not in body  # … its prompt is not
        assert api_key not in body
    finally:
        flower.terminate()
        flower.wait(20)
