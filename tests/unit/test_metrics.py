"""The worker's metrics: the farm's signals sent as the tasks send them, read back from the
registry; the tenant bound; the pool gauges; the /metrics server's port rule; the
heartbeat's fields."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from prometheus_client import generate_latest

from farm.jobs import Usage
from farm.observe import heartbeat, names
from farm.observe.metrics import TenantLabels, WorkerMetrics
from farm.observe.server import SPAN, NoFreePort, serve
from farm.worker import events
from farm.worker.lifecycle import pool_of


@pytest.fixture
def metrics() -> Iterator[WorkerMetrics]:
    pool = {"haiku-simple": (100, 3), "farm-intake": (100, 0)}
    made = WorkerMetrics(lambda: pool).connect()
    yield made
    made.disconnect()


def value(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    found: float | None = m.registry.get_sample_value(name, labels)
    return found


def test_every_worker_metric_of_the_catalogue_is_exported(metrics: WorkerMetrics) -> None:
    families = {f.name for f in metrics.registry.collect()}
    # prometheus-client names a counter's family without its _total
    assert {m.name.removesuffix("_total") for m in names.WORKER} == families


def test_a_call_counts_its_outcome_latency_cost_and_tokens(metrics: WorkerMetrics) -> None:
    events.call_started.send(None, model="claude-haiku-4-5")
    assert value(metrics, "farm_calls_in_flight", model="claude-haiku-4-5") == 1
    events.call_finished.send(
        None, model="claude-haiku-4-5", queue="haiku-simple", tenant="acme", outcome="ok",
        latency_s=1.2, cost=Decimal("0.0125"),
        usage=Usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=5))
    assert value(metrics, "farm_calls_in_flight", model="claude-haiku-4-5") == 0
    assert value(metrics, "farm_provider_calls_total", model="claude-haiku-4-5",
                 outcome="ok") == 1
    assert value(metrics, "farm_provider_latency_seconds_bucket", model="claude-haiku-4-5",
                 le="2.0") == 1
    assert value(metrics, "farm_provider_latency_seconds_bucket", model="claude-haiku-4-5",
                 le="1.0") == 0
    assert value(metrics, "farm_cost_usd_total", queue="haiku-simple",
                 model="claude-haiku-4-5", tenant="acme") == pytest.approx(0.0125)
    tokens = {kind: value(metrics, "farm_tokens_total", model="claude-haiku-4-5", kind=kind)
              for kind in ("input", "output", "cache_creation", "cache_read")}
    assert tokens == {"input": 100, "output": 20, "cache_creation": None, "cache_read": 5}


def test_a_failed_call_counts_its_error_class_and_an_unknown_cost_adds_nothing(
        metrics: WorkerMetrics) -> None:
    for _ in range(2):
        events.call_started.send(None, model="m")
        events.call_finished.send(None, model="m", queue="q", tenant="t",
                                  outcome="overloaded", latency_s=0.3, usage=None,
                                  cost=Decimal(0))
    events.call_started.send(None, model="m")
    events.call_finished.send(None, model="m", queue="q", tenant="t", outcome="abandoned",
                              latency_s=30.0, usage=None, cost=None)
    assert value(metrics, "farm_provider_calls_total", model="m", outcome="overloaded") == 2
    assert value(metrics, "farm_provider_calls_total", model="m", outcome="abandoned") == 1
    assert value(metrics, "farm_cost_usd_total", queue="q", model="m", tenant="t") == 0
    assert value(metrics, "farm_calls_in_flight", model="m") == 0


def test_jobs_finished_with_their_duration_in_the_catalogue_buckets(
        metrics: WorkerMetrics) -> None:
    for outcome, seconds in (("succeeded", 1.5), ("succeeded", 4.0), ("dead", 20.0),
                             ("failed", None)):
        events.job_finished.send(None, queue="haiku-simple", model="claude-haiku-4-5",
                                 outcome=outcome, duration_s=seconds)
    assert value(metrics, "farm_jobs_finished_total", queue="haiku-simple",
                 model="claude-haiku-4-5", outcome="succeeded") == 2
    assert value(metrics, "farm_jobs_finished_total", queue="haiku-simple",
                 model="claude-haiku-4-5", outcome="failed") == 1
    buckets = {le: value(metrics, "farm_job_duration_seconds_bucket", queue="haiku-simple",
                         le=le) for le in ("2.0", "5.0", "15.0", "30.0")}
    assert buckets == {"2.0": 1, "5.0": 2, "15.0": 2, "30.0": 3}  # a duration unknown: none
    assert value(metrics, "farm_job_duration_seconds_count", queue="haiku-simple") == 3


def test_deferrals_retries_dead_letters_and_late_results(metrics: WorkerMetrics) -> None:
    events.job_deferred.send(None, queue="q", reason=events.deferral_reason("m: rpm"))
    events.job_deferred.send(None, queue="q",
                             reason=events.deferral_reason("circuit of m is open"))
    events.job_deferred.send(None, queue="q", reason=events.deferral_reason(
        "queue q is paused"))
    events.job_deferred.send(None, queue="q", reason=events.HELD)
    events.job_deferred.send(None, queue="q", reason=events.deferral_reason(
        "budget tenant:a:day: spent $1.00 of $1.00, and this call may cost up to $0.01"))
    events.job_deferred.send(None, queue="q", reason=events.deferral_reason(
        "cost breaker all open"))
    events.job_deferred.send(None, queue="q", reason=events.deferral_reason(
        "memo: waiting for an identical job in flight"))
    events.job_retried.send(None, queue="q", reason="rate_limited")
    events.job_dead.send(None, queue="q", error_class="poison")
    events.late_result.send(None, queue="q")
    events.memo_hit.send(None, queue="q", model="m", saved=Decimal("0.25"))
    events.memo_hit.send(None, queue="q", model="m", saved=None)
    assert value(metrics, "farm_memo_hits_total", queue="q", model="m") == 2
    assert value(metrics, "farm_memo_saved_usd_total", queue="q", model="m") == 0.25
    for reason in events.DEFERRAL_REASONS:
        assert value(metrics, "farm_deferrals_total", queue="q", reason=reason) == 1
    assert value(metrics, "farm_retries_total", queue="q", reason="rate_limited") == 1
    assert value(metrics, "farm_dead_letters_total", queue="q", error_class="poison") == 1
    assert value(metrics, "farm_superseded_total", queue="q") == 1


def test_the_pool_gauges_are_read_when_scraped(metrics: WorkerMetrics) -> None:
    assert value(metrics, "farm_pool_slots", queue="haiku-simple") == 100
    assert value(metrics, "farm_pool_busy", queue="haiku-simple") == 3
    assert value(metrics, "farm_pool_busy", queue="farm-intake") == 0


def test_registries_are_separate_and_a_disconnected_one_hears_nothing() -> None:
    one, two = WorkerMetrics().connect(), WorkerMetrics()
    try:
        events.late_result.send(None, queue="q")
        assert value(one, "farm_superseded_total", queue="q") == 1
        assert value(two, "farm_superseded_total", queue="q") is None
        one.disconnect()
        events.late_result.send(None, queue="q")
        assert value(one, "farm_superseded_total", queue="q") == 1
    finally:
        one.disconnect()


def test_a_handler_that_raises_never_fails_the_sender(metrics: WorkerMetrics) -> None:
    answers = events.call_finished.send(None, model="m")  # its other arguments missing
    assert [type(exc) for _, exc in answers] == [TypeError]  # logged by Celery, not raised


def test_tenants_are_bounded_to_the_top_by_calls() -> None:
    labels = TenantLabels(top=2, tracked=4)
    assert [labels.label(t) for t in ("a", "a", "a", "b", "c")] == [
        "a", "a", "a", "b", names.OTHER]
    # c overtakes b (2 calls against 1): from now on c has its own label, b is "other"
    assert labels.label("c") == "c"
    assert labels.label("b") == names.OTHER  # 2 calls, not more than c's
    assert labels.label("a") == "a"
    labels.label("d")  # the fourth tenant tracked
    assert labels.label("e") == names.OTHER  # beyond the tracked ones: "other" for good
    assert all(labels.label("e") == names.OTHER for _ in range(10))


def test_the_cost_of_many_tenants_sums_exactly_under_the_bound(metrics: WorkerMetrics) -> None:
    tenants = [f"t{i}" for i in range(names.TENANT_TOP + 15)]
    for tenant in tenants:
        events.call_finished.send(None, model="m", queue="q", tenant=tenant, outcome="ok",
                                  latency_s=0.1, usage=None, cost=Decimal("0.5"))
    series = [s for f in metrics.registry.collect() if f.name == "farm_cost_usd"
              for s in f.samples if s.name == "farm_cost_usd_total"]
    assert len(series) == names.TENANT_TOP + 1
    assert {s.labels["tenant"] for s in series} == {*tenants[:names.TENANT_TOP], names.OTHER}
    assert sum(s.value for s in series) == pytest.approx(0.5 * len(tenants))


def test_the_output_holds_no_tenant_beyond_the_bound_nor_any_job_detail(
        metrics: WorkerMetrics) -> None:
    events.call_finished.send(None, model="m", queue="q", tenant="acme", outcome="ok",
                              latency_s=0.1, usage=Usage(input_tokens=1), cost=Decimal(1))
    text = generate_latest(metrics.registry).decode()
    assert "job_id" not in text and "prompt" not in text


def test_deferral_reasons_from_wait_reasons() -> None:
    assert events.deferral_reason("claude-haiku-4-5: otpm") == events.CAPACITY
    assert events.deferral_reason("claude-haiku-4-5: tenant-concurrency") == events.CAPACITY
    assert events.deferral_reason("circuit of claude-sonnet-5-5 is open") == events.CIRCUIT
    assert events.deferral_reason("queue sonnet-complex is paused") == events.PAUSED
    assert events.deferral_reason("held: spend limit") == events.HELD
    assert events.deferral_reason("budget global:day: in-flight reservations") == events.BUDGET
    assert events.deferral_reason("cost breaker claude-haiku-4-5 open") == events.COST_BREAKER


# --- the /metrics server ----------------------------------------------------------------

def test_two_servers_on_one_base_port_get_different_ports(metrics: WorkerMetrics) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    first = serve(metrics.registry, "127.0.0.1", base)
    second = serve(WorkerMetrics().registry, "127.0.0.1", base)
    try:
        assert first.port == base
        assert base < second.port < base + SPAN
        assert first.url == f"http://127.0.0.1:{base}/metrics"
        events.late_result.send(None, queue="q")
        body = httpx2.get(first.url).text
        assert 'farm_superseded_total{queue="q"} 1.0' in body
        assert 'farm_superseded_total{queue="q"}' not in httpx2.get(second.url).text
    finally:
        first.close()
        second.close()


def test_a_range_with_no_free_port_is_one_clear_error(metrics: WorkerMetrics) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        base = taken.getsockname()[1]
        with pytest.raises(NoFreePort, match=rf"no free port .* \[{base}, {base}\]"):
            serve(metrics.registry, "127.0.0.1", base, span=1)
    finally:
        taken.close()


# --- the heartbeat's fields -------------------------------------------------------------

def test_heartbeat_fields_round_trip() -> None:
    pool = {"haiku-simple": (100, 7), "farm-intake": (100, 0)}
    written = heartbeat.fields(pool, 9464)
    assert written == {"haiku-simple": "100 7", "farm-intake": "100 0", "metrics_port": "9464"}
    assert heartbeat.parse({k.encode(): v.encode() for k, v in written.items()}) == (pool, 9464)
    assert "metrics_port" not in heartbeat.fields(pool, None)
    assert heartbeat.key("host", 42) == "farm:pool:host:42"


# --- which processes keep metrics ---------------------------------------------------------

def _consumer(pool_module: str) -> SimpleNamespace:
    pool = type("TaskPool", (), {"__module__": f"celery.concurrency.{pool_module}"})()
    return SimpleNamespace(pool=pool, farm_pool=f"the pool of a {pool_module} worker")


def test_the_pool_of_a_worker_by_its_pool_kind(caplog: pytest.LogCaptureFixture) -> None:
    for kind in ("thread", "gevent", "solo"):
        assert pool_of(_consumer(kind)) == f"the pool of a {kind} worker"
    assert pool_of(_consumer("prefork")) is None
    assert "not kept under the prefork pool" in caplog.text
    assert pool_of(None) is None


def test_the_readme_lists_every_worker_metric() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Metrics of every worker**", 1)[1].split("**Pool heartbeat**")[0]
    for metric in names.WORKER:
        assert f"`{metric.name}`" in section, metric.name
    for bucket in (*names.DURATION_BUCKETS, *names.LATENCY_BUCKETS):
        assert f"{bucket:g}" in section


def test_a_heartbeat_reads_back_and_skips_what_does_not_parse() -> None:
    from farm.observe import heartbeat

    raw = {b"haiku-simple": b"40 3", b"metrics_port": b"9464", b"junk": b"x", "q2": "8 0"}
    assert heartbeat.parse(raw) == ({"haiku-simple": (40, 3), "q2": (8, 0)}, 9464)
    assert heartbeat.parse({b"metrics_port": b"?"}) == ({}, None)
