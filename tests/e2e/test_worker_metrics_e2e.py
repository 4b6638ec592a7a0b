"""A real worker with FARM_METRICS_PORT runs jobs against the simulator: its /metrics shows
what it did (jobs, calls, retries, dead letters, durations in the catalogue's buckets, the
cost and tokens Postgres recorded for the same jobs, its pool), its pool heartbeat names
the port, and the output holds no job id, prompt or key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from farm.client import Farm
from farm.jobs import JobStatus
from farm.observe import heartbeat
from farm.services import free_port
from tests_e2e import API_KEY, start_worker, stop, wait_ready, wait_until

SLOTS = 8
URL_LINE = re.compile(r"metrics on (http://127\.0\.0\.1:(\d+)/metrics)")


@pytest.fixture(scope="module")
def metrics_worker(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[str, int, Path]]:
    """A worker on haiku-simple with metrics on: (its /metrics URL, its pid, its log)."""
    env = {**e2e_env, "FARM_METRICS_PORT": str(free_port())}
    log = tmp_path_factory.mktemp("metrics-worker") / "worker.log"
    worker = start_worker(env, log, "haiku-simple", SLOTS)
    try:
        wait_ready(log, worker)
        found = URL_LINE.search(log.read_text())
        assert found, "the worker did not log where its metrics are"
        yield found[1], worker.pid, log
    finally:
        stop(worker)


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = httpx2.get(url).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def sample(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_the_workers_metrics_show_its_jobs(metrics_worker: tuple[str, int, Path],
                                           farm: Farm, e2e_env: dict[str, str]) -> None:
    url, pid, log = metrics_worker
    model = "claude-haiku-4-5"
    secret_prompt = "zebra-{i}-quartz: what is the capital of France?"
    jobs = [{"prompt": secret_prompt.format(i=i), "complexity": "simple",
             "tenant": "acme" if i % 3 else "beta"} for i in range(15)]
    jobs += [{"prompt": "[[sim:status=400]] a bad one", "complexity": "simple"},
             {"prompt": "[[sim:status=500]] a failing one", "complexity": "simple"}]
    ids = farm.submit_many(jobs)
    views = farm.wait(ids, timeout=120)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * 15 + [
        JobStatus.FAILED, JobStatus.DEAD]

    def finished(found: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str | None:
        counts = [sample(found, "farm_jobs_finished_total", queue="haiku-simple", model=model,
                         outcome=o) for o in ("succeeded", "failed", "dead")]
        return None if counts == [15, 1, 1] else f"jobs finished (ok, failed, dead): {counts}"

    wait_until(lambda: finished(samples(url)), 30)
    found = samples(url)
    # every call: 15 + 1 (400, fatal) + 3 (500, retried twice, then dead)
    assert sample(found, "farm_provider_calls_total", model=model, outcome="ok") == 15
    assert sample(found, "farm_provider_calls_total", model=model, outcome="bad_request") == 1
    assert sample(found, "farm_provider_calls_total", model=model, outcome="server_error") == 3
    assert sample(found, "farm_retries_total", queue="haiku-simple",
                  reason="server_error") == 2
    assert sample(found, "farm_dead_letters_total", queue="haiku-simple",
                  error_class="bad_request") == 1
    assert sample(found, "farm_dead_letters_total", queue="haiku-simple",
                  error_class="server_error") == 1
    assert sample(found, "farm_calls_in_flight", model=model) == 0
    # durations in the catalogue's buckets: 2, 5, 15 and 30 s are edges
    for le in ("2.0", "5.0", "15.0", "30.0", "+Inf"):
        assert sample(found, "farm_job_duration_seconds_bucket", queue="haiku-simple",
                      le=le) is not None
    assert sample(found, "farm_job_duration_seconds_count", queue="haiku-simple") == 17
    assert sample(found, "farm_provider_latency_seconds_count", model=model) == 19
    # cost and tokens: what Postgres recorded for these jobs, per tenant
    with farm.engine.connect() as conn:
        rows = conn.execute(text(
            "select j.tenant, sum(a.cost_usd), sum(a.input_tokens), sum(a.output_tokens) "
            "from attempts a join jobs j on j.id = a.job_id where a.job_id = any(:ids) "
            "group by j.tenant"), {"ids": ids}).all()
    recorded = {tenant: (float(cost), int(i), int(o)) for tenant, cost, i, o in rows}
    for tenant, (cost, _, _) in recorded.items():
        assert sample(found, "farm_cost_usd_total", queue="haiku-simple", model=model,
                      tenant=tenant) == pytest.approx(cost, rel=1e-9)
    assert recorded["acme"][0] > 0
    assert sample(found, "farm_tokens_total", model=model, kind="input") == sum(
        i for _, i, _ in recorded.values())
    assert sample(found, "farm_tokens_total", model=model, kind="output") == sum(
        o for _, _, o in recorded.values())
    # its pool
    assert sample(found, "farm_pool_slots", queue="haiku-simple") == SLOTS
    assert sample(found, "farm_pool_busy", queue="haiku-simple") == 0
    # nothing of the jobs but their counts: no id, no prompt, no key
    body = httpx2.get(url).text
    assert API_KEY not in body and "zebra" not in body and "sim:status" not in body
    assert not any(str(job) in body for job in ids)
    # the pool heartbeat names the port
    client = redis.Redis.from_url(e2e_env["FARM_BROKER_URL"])
    try:
        keys = [k.decode() for k in client.scan_iter(f"{heartbeat.PREFIX}*:{pid}")]
        assert len(keys) == 1
        pool, port = heartbeat.parse(client.hgetall(keys[0]))
        beats: list[heartbeat.WorkerBeat] = []

        def counted() -> str | None:  # a beat every 5 s: the next one counts the jobs
            beats.append({b.pid: b for b in heartbeat.read_all(client)}[pid])
            done = beats[-1].jobs_done
            return None if done is not None and done >= len(ids) else f"jobs_done {done}"

        wait_until(counted, 15)
        beat = beats[-1]
    finally:
        client.close()
    assert port == int(url.rsplit(":", 1)[1].split("/")[0])
    assert pool == {"haiku-simple": (SLOTS, 0)}
    # what `farm workers` shows of it: its pool's bounds, state, jobs done, memory
    assert (beat.slots_min, beat.slots_max, beat.state) == (SLOTS, SLOTS, "ready")
    assert beat.rss_mb is not None and beat.rss_mb > 10 and beat.metrics_port == port
    assert "Signal handler" not in log.read_text()  # no handler raised


def test_a_clean_shutdown_deletes_the_heartbeat(e2e_env: dict[str, str], tmp_path: Path
                                                ) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(e2e_env, log, "sonnet-complex,farm-intake", 3)
    client = redis.Redis.from_url(e2e_env["FARM_BROKER_URL"])
    pattern = f"{heartbeat.PREFIX}*:{worker.pid}"
    try:
        wait_ready(log, worker)
        wait_until(lambda: None if list(client.scan_iter(pattern)) else "no heartbeat", 30)
        key = next(iter(client.scan_iter(pattern)))
        # metrics off: no port, no server, the heartbeat all the same
        assert heartbeat.parse(client.hgetall(key)) == (
            {"sonnet-complex": (3, 0), "farm-intake": (3, 0)}, None)
        assert "metrics on" not in log.read_text()
        stop(worker)
        assert worker.returncode == 0
        assert not client.exists(key)
    finally:
        stop(worker)
        client.close()
