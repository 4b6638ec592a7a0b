"""The snapshot against real Redis and Postgres (queue depth over every priority list and the
unacknowledged hash, window figures, utilisation from pool heartbeats, circuits, hold), the
exporter's /metrics (two at once), its webhook to a local receiver, and `farm alerts --json`
in a constructed situation. Each test has queues of its own (the database is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import click
import httpx2
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.broker.layout import UNACKED, queue_keys
from farm.capacity.build import redis_breaker, redis_limiter
from farm.capacity.config import ModelLimits
from farm.capacity.limits import Grant
from farm.cli.main import main
from farm.client import Farm
from farm.jobs import Priority
from farm.observe.snapshot import take_for
from farm.reliability import hold
from farm.settings import QueueSpec, Settings
from farm.store.db import Database
from farm.store.schema import make_engine
from tests_e2e import wait_until
from tests_support import free_port, fresh_database, wait_port


@pytest.fixture
def queues() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"obs-a-{tag}", f"obs-b-{tag}"


@pytest.fixture(scope="module")
def database_url(service_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this module's own: the alerts read every job of the last minutes, and
    other tests' jobs (failed intake jobs, say) would fire them too."""
    with fresh_database(service_urls[1], "farm_observe", "head") as url:
        yield url


@pytest.fixture
def settings(broker_url: str, database_url: str, tmp_path: Path,
             queues: tuple[str, str]) -> Settings:
    return Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path,
                    queues=(QueueSpec(name=queues[0], model="claude-haiku-4-5",
                                      complexity="simple"),
                            QueueSpec(name=queues[1], model="claude-sonnet-5-5",
                                      complexity="complex")))


@pytest.fixture
def env(settings: Settings, broker_url: str, database_url: str, tmp_path: Path
        ) -> dict[str, str]:
    return {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": database_url,
            "FARM_DATA_DIR": str(tmp_path),
            "FARM_QUEUES": json.dumps([q.model_dump() for q in settings.queues])}


@pytest.fixture
def broker(broker_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    yield e
    e.dispose()


def unack(broker: Any, queue: str, *, eta: datetime | None = None) -> None:
    """What kombu does when a worker takes a message: [message, exchange, routing key] in the
    unacknowledged hash (a message with an ETA stays there, in its worker, until due)."""
    headers: dict[str, Any] = {"task": "farm.run_job", "id": str(uuid.uuid4())}
    if eta is not None:
        headers["eta"] = eta.isoformat()
    message = {"body": "", "headers": headers, "properties": {"delivery_tag": "x"}}
    broker.hset(UNACKED, uuid.uuid4().hex, json.dumps([message, "farm", queue]))


def insert_jobs(engine: Engine, queue: str, rows: list[tuple[str, float, float]]) -> None:
    """Jobs of `queue`: (status, finished how many seconds ago, duration created→finished)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for status, ago, duration in rows:
            finished = now - timedelta(seconds=ago)
            conn.execute(text(
                "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, "
                "request, created_at, finished_at) VALUES (:id, :status, 'simple', :queue, "
                "'claude-haiku-4-5', 'normal', 'obs', '{}', :created, :finished)"),
                {"id": uuid.uuid4(), "status": status, "queue": queue,
                 "created": finished - timedelta(seconds=duration), "finished": finished})


def test_queue_depth_counts_every_priority_list_and_the_unacknowledged(
        settings: Settings, broker: Any, engine: Engine, db: Database,
        queues: tuple[str, str]) -> None:
    a, b = queues
    with Farm(settings) as farm:
        for priority in (Priority.HIGH, Priority.NORMAL, Priority.NORMAL, Priority.LOW):
            farm.submit(prompt="hello?", queue=a, priority=priority)
    lengths = [broker.llen(key) for key in queue_keys(a)]
    assert lengths == [1, 2, 1]  # one Redis list per priority step
    unack(broker, a)  # running
    unack(broker, a, eta=datetime.now(UTC) + timedelta(minutes=5))  # a retry's countdown
    unack(broker, a, eta=datetime.now(UTC) - timedelta(seconds=5))  # due: taken, not delayed
    unack(broker, b)
    broker.hset(UNACKED, "garbage", "not json")  # skipped, not fatal
    snap = take_for(settings, broker, db)
    qa, qb = snap.queue(a), snap.queue(b)
    assert qa is not None and qb is not None
    assert (qa.waiting, qa.unacked, qa.delayed, qa.depth) == (4, 3, 1, 7)
    assert (qb.waiting, qb.unacked, qb.delayed, qb.depth) == (0, 1, 0, 1)
    assert qa.queued_jobs == 4 and qa.oldest_wait_s is not None and qa.oldest_wait_s >= 0
    assert qb.queued_jobs == 0 and qb.oldest_wait_s is None
    assert snap.problems == ()


def test_error_rate_and_percentiles_over_the_last_five_minutes(
        settings: Settings, broker: Any, engine: Engine, db: Database,
        queues: tuple[str, str]) -> None:
    a, b = queues
    # 100 jobs finished a minute ago, taking 1..100 s; 3 failed and 1 dead among them
    rows = [("succeeded", 60.0, float(d)) for d in range(1, 97)]
    rows += [("failed", 60.0, 97.0), ("failed", 60.0, 98.0), ("failed", 60.0, 99.0),
             ("dead", 60.0, 100.0)]
    # outside the window or not finished jobs: not counted
    rows += [("failed", 600.0, 500.0), ("cancelled", 10.0, 1000.0)]
    insert_jobs(engine, a, rows)
    insert_jobs(engine, b, [("succeeded", 30.0, 2.0)])
    snap = take_for(settings, broker, db)
    qa, qb = snap.queue(a), snap.queue(b)
    assert qa is not None and qb is not None
    w = qa.window
    assert (w.finished, w.failed, w.error_rate) == (100, 4, 0.04)
    # Postgres's percentile_cont: linear between the closest ranks
    assert w.p50_s == pytest.approx(50.5, abs=0.01)
    assert w.p95_s == pytest.approx(95.05, abs=0.01)
    assert w.p99_s == pytest.approx(99.01, abs=0.01)
    assert (qb.window.finished, qb.window.failed, qb.window.p95_s) == (1, 0, pytest.approx(2.0))
    assert snap.total.finished >= 101  # every queue (other tests' jobs too)
    counts = dict(snap.jobs_by_status)
    assert counts["succeeded"] >= 97 and counts["dead"] >= 1 and counts["cancelled"] >= 1


def test_utilisation_comes_from_the_pool_heartbeats(
        settings: Settings, broker: Any, engine: Engine, db: Database,
        queues: tuple[str, str]) -> None:
    a, b = queues
    broker.hset(f"farm:pool:host1:{os.getpid()}", mapping={a: "10 9", b: "10 1",
                                                            "metrics_port": "9100"})
    broker.hset("farm:pool:host2:77", mapping={a: "10 10"})
    broker.hset("farm:pool:host3:78", mapping={a: "ten busy"})  # unreadable: skipped
    for key in (f"farm:pool:host1:{os.getpid()}", "farm:pool:host2:77"):
        broker.expire(key, 30)
    snap = take_for(settings, broker, db)
    qa, qb = snap.queue(a), snap.queue(b)
    assert qa is not None and qb is not None
    assert (qa.slots, qa.busy, qa.utilisation) == (20, 19, 0.95)
    assert (qb.slots, qb.busy, qb.utilisation) == (10, 1, 0.1)
    assert snap.queue("farm-intake") is not None
    intake = snap.queue("farm-intake")
    assert intake is not None and intake.utilisation is None  # no worker: no figure


def test_limiter_use_per_model(settings: Settings, broker: Any, engine: Engine,
                               db: Database) -> None:
    limited = settings.model_copy(update={"limits": {"claude-sonnet-5-5": ModelLimits(
        rpm=100, max_concurrency=4)}})
    limiter = redis_limiter(broker, limited)
    limiter.observe("claude-sonnet-5-5", {})  # answered: its buckets hold their whole burst
    for _ in range(2):
        assert isinstance(limiter.acquire("claude-sonnet-5-5", input_tokens=10,
                                          output_tokens=10, priority=Priority.HIGH,
                                          tenant="obs"), Grant)
    use = {(u.model, u.kind): u.ratio for u in take_for(limited, broker, db).limiters}
    assert use[("claude-sonnet-5-5", "concurrency")] == 0.5  # 2 calls of 4 slots
    # 2 requests of the bucket's 8.2 (5 s of 98/min): the limiter paces, not the minute
    assert 0.2 < use[("claude-sonnet-5-5", "rpm")] < 0.3
    assert not any(model == "claude-haiku-4-5" for model, _ in use)  # no limits: no use


def test_circuits_hold_and_cost(settings: Settings, broker: Any, engine: Engine,
                                db: Database) -> None:
    breaker = redis_breaker(broker, settings)
    for _ in range(settings.breaker_failures):
        breaker.record("claude-sonnet-5-5", success=False, probe=False)
    hold.set_hold(broker, "spend limit reached")
    model = f"claude-obs-{uuid.uuid4().hex[:6]}"
    job = uuid.uuid4()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, request)"
            " VALUES (:id, 'succeeded', 'simple', 'x', :m, 'normal', 'obs', '{}')"),
            {"id": job, "m": model})
        for attempt, (ago, usd) in enumerate(((600, "1.5"), (1200, "0.25"), (4000, "99"))):
            conn.execute(text(
                "INSERT INTO attempts (job_id, attempt, queue, model, outcome, cost_usd, "
                "started_at, finished_at) VALUES (:j, :n, 'x', :m, 'ok', :usd, :t, :t)"),
                {"j": job, "n": attempt + 1, "m": model, "usd": usd,
                 "t": now - timedelta(seconds=ago)})
    snap = take_for(settings, broker, db)
    circuits = {c.model: c for c in snap.circuits}
    sonnet = circuits["claude-sonnet-5-5"]
    assert sonnet.state == "open" and sonnet.open and sonnet.opened_at is not None
    assert sonnet.not_closed_since == sonnet.opened_at  # no re-opening before
    assert circuits["claude-haiku-4-5"].state == "closed"
    assert snap.hold is not None and snap.hold.reason == "spend limit reached"
    assert dict(snap.cost_by_model)[model] == pytest.approx(1.75)  # the last hour's
    assert snap.cost_usd_per_hour >= 1.75


def test_farm_alerts_json_fires_queue_depth_and_error_rate(
        env: dict[str, str], broker: Any, engine: Engine, queues: tuple[str, str]) -> None:
    a, b = queues
    for _ in range(3):
        unack(broker, a)
    broker.rpush(queue_keys(a)[1], "m1", "m2")
    insert_jobs(engine, b, [("succeeded", 30.0, 1.0)] * 9 + [("dead", 30.0, 1.0)])
    quiet = CliRunner().invoke(main, ["alerts", "--json"], env=env)
    assert quiet.exit_code == 0, quiet.output
    assert json.loads(quiet.stdout)["firing"][0]["alert"] == "FarmErrorRateHigh"
    env = {**env, "FARM_ALERT_QUEUE_DEPTH": "4"}
    result = CliRunner().invoke(main, ["alerts", "--json"], env=env)
    assert result.exit_code == 0, result.output
    firing = json.loads(result.stdout)["firing"]
    assert [(f["alert"], f["labels"], f["value"], f["threshold"]) for f in firing] == [
        ("FarmQueueDepthHigh", {"queue": a}, 5.0, 4.0),
        ("FarmErrorRateHigh", {"queue": b}, 0.1, 0.02)]
    assert firing[0]["summary"] == f"queue {a}: 5 messages waiting (threshold 4)"
    text_out = CliRunner().invoke(main, ["alerts"], env=env)
    assert text_out.exit_code == 0
    assert text_out.stdout.splitlines() == [
        f"FIRING FarmQueueDepthHigh queue={a} [warning]: queue {a}: 5 messages waiting "
        "(threshold 4)",
        f"FIRING FarmErrorRateHigh queue={b} [warning]: queue {b}: 10% of the jobs finished "
        "in 5 minutes failed (threshold 2%)"]


def test_farm_alerts_without_redis_or_postgres(env: dict[str, str], tmp_path: Path) -> None:
    closed = free_port()
    no_redis = CliRunner().invoke(main, ["alerts"], env={
        **env, "FARM_BROKER_URL": f"redis://127.0.0.1:{closed}/0"})
    assert no_redis.exit_code == 1
    assert no_redis.stderr.startswith("Error: cannot reach the broker (Redis): ")
    assert len(no_redis.stderr.splitlines()) == 1
    no_db = CliRunner().invoke(main, ["alerts", "--json"], env={
        **env, "FARM_DATABASE_URL": f"postgresql://farm:secret@127.0.0.1:{closed}/farm"})
    assert no_db.exit_code == 0
    [problem] = json.loads(no_db.stdout)["problems"]
    assert problem.startswith("Postgres: OperationalError: ") and "secret" not in problem


def test_the_sources_have_timeouts(settings: Settings) -> None:
    from farm.cli.observe import TIMEOUT_S, sources

    with click.Context(main, obj=settings) as ctx, sources(ctx) as (client, db):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == TIMEOUT_S == 5
        assert db.connect_timeout_s == 5 and db.timeout_s == 5


def test_farm_top_once_prints_a_frame(env: dict[str, str], broker: Any,
                                      queues: tuple[str, str]) -> None:
    broker.rpush(queue_keys(queues[0])[0], "m1")
    result = CliRunner().invoke(main, ["top", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert "throughput" in result.stdout and queues[0] in result.stdout
    assert "claude-sonnet-5-5" in result.stdout


# --- the exporter, as a process -----------------------------------------------------------

class Receiver(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.got.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    Receiver.got = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", Receiver.got
    server.shutdown()
    server.server_close()


def exporter(env: dict[str, str], log: Path, *args: str
             ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "exporter", "--port",
                                 str(port), *args], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=out)
    return proc, port


def test_two_exporters_serve_the_same_cluster_metrics_and_post_alerts(
        env: dict[str, str], broker: Any, queues: tuple[str, str],
        receiver: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    a, _ = queues
    url, got = receiver
    broker.rpush(queue_keys(a)[0], "m1", "m2")
    broker.rpush(queue_keys(a)[2], "m3")
    unack(broker, a)
    unack(broker, a, eta=datetime.now(UTC) + timedelta(minutes=5))  # waits for its ETA
    hooked = {**env, "FARM_ALERT_QUEUE_DEPTH": "5", "FARM_ALERT_FOR_S": "0"}
    one, port_one = exporter(env, tmp_path / "one.log")
    two, port_two = exporter(hooked, tmp_path / "two.log", "--webhook", url, "--every", "0.2")
    try:
        wait_port(port_one)
        wait_port(port_two)
        pages = [httpx2.get(f"http://127.0.0.1:{p}/metrics").text for p in (port_one, port_two)]
        for page in pages:
            assert f'farm_queue_depth{{queue="{a}"}} 5.0' in page
            # the autoscaler's demand: not the message waiting for its ETA
            assert f'farm_queue_demand{{queue="{a}"}} 4.0' in page
            assert "farm_hold 0.0" in page and 'farm_jobs{status="queued"}' in page
            assert 'farm_circuit_open{model="claude-haiku-4-5",state="closed"} 0.0' in page
        assert got == []  # 5 is not over 5
        broker.rpush(queue_keys(a)[1], "m4")  # 6 now
        wait_until(lambda: None if got else "a firing payload", 20)
        firing = got[0]
        assert firing["version"] == "4" and firing["status"] == "firing"
        assert [x["labels"] for x in firing["alerts"]] == [
            {"alertname": "FarmQueueDepthHigh", "severity": "warning", "queue": a}]
        assert firing["alerts"][0]["annotations"]["value"] == "6"
        broker.delete(*queue_keys(a))
        wait_until(lambda: None if len(got) >= 2 else "a resolved payload", 20)
        resolved = got[1]
        assert resolved["status"] == "resolved"
        assert resolved["alerts"][0]["status"] == "resolved"
        assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
        assert len(got) == 2  # nothing changed since: nothing more sent
        assert "webhook: firing, 1 alert(s)" in (tmp_path / "two.log").read_text()
    finally:
        for proc in (one, two):
            proc.terminate()
            proc.wait(10)
