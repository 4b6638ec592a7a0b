"""`make test-ops`: a real Prometheus scrapes a running farm under load — real `celery
worker` processes serving /metrics (FARM_METRICS_PORT) and `farm exporter` — with the
farm's own alert rules (farm.observe.rules.render_rules, the queue-depth threshold set low)
and sends to a real Alertmanager, whose webhook receiver is this test. Pausing a queue
while jobs keep coming makes FarmQueueDepthHigh fire through Alertmanager; resuming it
resolves the alert. Every dashboard query runs on the same Prometheus.

Prometheus, Alertmanager and promtool must be installed (`make test-ops` installs them);
without them the tests fail, they do not skip."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.client import Farm
from farm.jobs import JobStatus
from farm.observe import names
from farm.settings import Settings
from tests_e2e import log_text, running_workers, stop, wait_until
from tests_ops import (
    Webhook,
    alertmanager,
    prometheus,
    prometheus_config,
    query,
    targets_down,
    webhook_server,
)
from tests_support import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
PAUSED = "haiku-simple"  # the queue the test pauses
OTHER = "sonnet-complex"  # keeps running throughout
THRESHOLD = 30  # FarmQueueDepthHigh's threshold here (500 by default)
ALERT = "FarmQueueDepthHigh"
# a paused queue's job is looked at again (and deferred again) this often: short, so that
# after `farm resume` no deferred message waits long to be run or dropped as a duplicate
RECHECK_S = "2"
METRICS_LINE = re.compile(r"metrics on http://([\d.]+):(\d+)/metrics")


def rendered_rules(threshold: int) -> str:
    """The farm's alert rules as `farm.observe.rules.render_rules` renders them from the
    settings — the one definition the exporter's and `farm alerts`' thresholds come from —
    with FARM_ALERT_QUEUE_DEPTH at ``threshold`` and FARM_ALERT_FOR_S at 1 s, so the test
    need not wait minutes (the default `for` is `promtool test rules`' business)."""
    from farm.observe import rules

    text = rules.render_rules(rules.thresholds(
        Settings(alert_queue_depth=threshold, alert_for_s=1)))
    doc = yaml.safe_load(text)
    found = [rule for group in doc["groups"] for rule in group["rules"]
             if rule.get("alert") == ALERT]
    assert len(found) == 1, f"{ALERT} is not among the rendered rules"
    assert str(threshold) in found[0]["expr"], found[0]["expr"]
    return text


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    prometheus: str  # its URL
    webhook: Webhook
    logs: list[Path]


def metrics_targets(logs: list[Path]) -> list[str]:
    """host:port of each worker's /metrics, from the line it logs when it listens."""
    found: dict[Path, str] = {}

    def missing() -> str | None:
        for log in logs:
            match = METRICS_LINE.search(log_text(log))
            if match:
                found[log] = f"{match[1]}:{match[2]}"
        absent = [log.name for log in logs if log not in found]
        return f"no 'metrics on http://…/metrics' line in {absent}" if absent else None

    wait_until(missing, timeout=30)
    return [found[log] for log in logs]


@contextmanager
def farm_exporter(env: dict[str, str], log: Path) -> Iterator[str]:
    """`farm exporter --port P` on a free port: its host:port."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "exporter", "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port, timeout=30)
        except TimeoutError:
            raise AssertionError(f"farm exporter did not listen on {port}:\n"
                                 f"{log.read_text(errors='replace')[-2000:]}") from None
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def stack(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("ops")
    # both workers get the same FARM_METRICS_PORT: the second takes the next free port
    env = {**e2e_env, "FARM_METRICS_PORT": str(free_port()), "FARM_HOLD_RECHECK_S": RECHECK_S}
    specs = [(folder / f"{queue}.log", queue, 20) for queue in (PAUSED, OTHER)]
    rules = folder / "farm-alerts.yml"
    rules.write_text(rendered_rules(THRESHOLD))
    with running_workers(env, specs), farm_exporter(env, folder / "exporter.log") as cluster, \
            webhook_server() as (hook, hook_url), \
            alertmanager(folder / "alertmanager", hook_url) as am:
        workers = metrics_targets([log for log, _, _ in specs])
        assert len(set(workers)) == len(workers), f"two workers on one port: {workers}"
        config = prometheus_config({"farm-workers": workers, "farm-exporter": [cluster]},
                                   rules, am.url)
        with prometheus(folder / "prometheus", config) as prom:
            yield Stack(env, prom.url, hook, [log for log, _, _ in specs])


@contextmanager
def load(env: dict[str, str], per_tick: dict[str, int], tick_s: float = 0.25
         ) -> Iterator[list[uuid.UUID]]:
    """Jobs keep coming: every ``tick_s``, ``per_tick[queue]`` jobs on each queue, over
    three tenants. Yields the ids submitted so far (a growing list)."""
    settings = Settings(broker_url=env["FARM_BROKER_URL"], database_url=env["FARM_DATABASE_URL"],
                        data_dir=Path(env["FARM_DATA_DIR"]))
    ids: list[uuid.UUID] = []
    done = threading.Event()
    failures: list[BaseException] = []

    def submit() -> None:
        try:
            with Farm(settings) as farm:
                n = 0
                while not done.is_set():
                    jobs = [{"prompt": f"load {n + i}: say something short", "queue": queue,
                             "tenant": f"tenant-{(n + i) % 3}", "max_tokens": 64}
                            for queue, count in per_tick.items() for i in range(count)]
                    n += len(jobs)
                    ids.extend(farm.submit_many(jobs))
                    done.wait(tick_s)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=submit, name="load", daemon=True)
    thread.start()
    try:
        yield ids
    finally:
        done.set()
        thread.join(60)
    assert not failures, failures


def farm_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def series_missing(prometheus_url: str, wanted: dict[str, str]) -> str | None:
    """None once every query of ``wanted`` (what -> PromQL) returns samples."""
    empty = [what for what, expr in wanted.items() if not query(prometheus_url, expr)]
    return f"no samples yet for: {empty}" if empty else None


# what the farm shows under load with no fault: from the workers and from the exporter
WORKER_SERIES = {
    "jobs succeeded": 'farm_jobs_finished_total{outcome="succeeded"}',
    "provider calls ok": 'farm_provider_calls_total{outcome="ok"}',
    "job duration": "farm_job_duration_seconds_bucket",
    "provider latency": "farm_provider_latency_seconds_bucket",
    "pool slots": f'farm_pool_slots{{queue="{PAUSED}"}}',
    "pool busy": f'farm_pool_busy{{queue="{PAUSED}"}}',
    "cost": "farm_cost_usd_total",
    "tokens": "farm_tokens_total",
}
CLUSTER_SERIES = {
    "queue depth": f'farm_queue_depth{{queue="{PAUSED}"}}',
    "oldest wait": f'farm_queue_oldest_wait_seconds{{queue="{PAUSED}"}}',
    "jobs by status": 'farm_jobs{status="succeeded"}',
    "hold": "farm_hold",
}
# panels with data under this load (errors, retries, dead letters, circuits need faults)
PANELS_WITH_DATA = ("Throughput", "Job duration", "Provider latency", "Queue depth",
                    "Pool utilisation", "Cost per hour", "Tokens per second")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables filled in as
    Grafana would for "All"."""
    dashboard = json.loads((ROOT / "ops" / "grafana" / "farm.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "30s").replace(
                "$__interval", "5s").replace("$__range", "5m")
            expr = re.sub(r"\$\{?(queue|model)\}?", ".*", expr)
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out


def test_prometheus_scrapes_the_farm_under_load(stack: Stack) -> None:
    with load(stack.env, {PAUSED: 2, OTHER: 1}) as ids:
        wait_until(lambda: "; ".join(targets_down(stack.prometheus)) or None, timeout=60)
        wait_until(lambda: series_missing(stack.prometheus, WORKER_SERIES | CLUSTER_SERIES),
                   timeout=90, interval=1)
        # every worker process is a target of its own, on its own port: waited for, as
        # Prometheus may not have discovered the second one when the first one's series are in
        def workers_not_up() -> str | None:
            ups = query(stack.prometheus, 'up{job="farm-workers"} == 1')
            return None if len(ups) == 2 else f"{len(ups)} of 2 worker targets up: {ups}"

        wait_until(workers_not_up, timeout=60, interval=1)
        # the farm exports no farm_ name the catalogue lacks
        seen = {s["metric"]["__name__"] for s in query(stack.prometheus,
                                                        '{__name__=~"farm_.*"}')}
        assert seen <= names.exported_names(), sorted(seen - names.exported_names())

        def panels_without_data() -> str | None:
            empty = {title for title, expr in dashboard_queries()
                     if not query(stack.prometheus, expr)}  # query() fails on bad PromQL
            short = [t for t in empty if t.startswith(PANELS_WITH_DATA)]
            return f"dashboard panels without data: {short}" if short else None

        wait_until(panels_without_data, timeout=90, interval=1)
    assert ids


def _firing(hook: Webhook, queue: str) -> list[dict[str, Any]]:
    return [a for a in hook.alerts(ALERT, "firing") if a["labels"].get("queue") == queue]


def _resolved(hook: Webhook, queue: str) -> list[dict[str, Any]]:
    return [a for a in hook.alerts(ALERT, "resolved") if a["labels"].get("queue") == queue]


def _at_webhook(stack: Stack, seen: Callable[[Webhook, str], list[dict[str, Any]]], what: str
                ) -> Callable[[], str | None]:
    """A wait_until check: None once the webhook got ``seen`` (firing or resolved) for the
    paused queue, else what it has not got, with the queue's depth now."""
    def missing() -> str | None:
        if seen(stack.webhook, PAUSED):
            return None
        depth = query(stack.prometheus, f'farm_queue_depth{{queue="{PAUSED}"}}')
        return (f"no {ALERT} {what} for {PAUSED} at the webhook; depth now "
                f"{[s['value'][1] for s in depth]}")

    return missing


def test_pausing_a_queue_fires_the_queue_depth_alert_and_resuming_resolves_it(
        stack: Stack) -> None:
    with load(stack.env, {PAUSED: 2, OTHER: 1}) as ids:
        # the farm keeps up with the load: jobs finish, the alert has not fired
        wait_until(lambda: series_missing(stack.prometheus, {
            "jobs succeeded": f'farm_jobs_finished_total{{queue="{PAUSED}"}} > 0',
            "queue depth": f'farm_queue_depth{{queue="{PAUSED}"}}'}), timeout=90, interval=1)
        assert not _firing(stack.webhook, PAUSED), stack.webhook.payloads
        try:
            assert "paused" in farm_cli(stack.env, "pause", PAUSED)
            paused_at = time.monotonic()

            wait_until(_at_webhook(stack, _firing, f"firing, threshold {THRESHOLD}"),
                       timeout=120, interval=0.5)
        finally:
            fired_after = time.monotonic() - paused_at
            assert "resumed" in farm_cli(stack.env, "resume", PAUSED)
            resumed_at = time.monotonic()
        fired = _firing(stack.webhook, PAUSED)[0]
        assert fired["labels"].get("severity"), fired
        assert any(str(THRESHOLD) in text for text in fired["annotations"].values()), fired

        wait_until(_at_webhook(stack, _resolved, "resolved"), timeout=120, interval=0.5)
        resolved_after = time.monotonic() - resumed_at
    # the queue that kept running never crossed the threshold; every job ran, the paused
    # ones after the resume
    assert not _firing(stack.webhook, OTHER)
    with Farm(Settings(broker_url=stack.env["FARM_BROKER_URL"],
                       database_url=stack.env["FARM_DATABASE_URL"],
                       data_dir=Path(stack.env["FARM_DATA_DIR"]))) as farm:
        views = farm.wait(ids, timeout=180)
    assert {v.status for v in views} == {JobStatus.SUCCEEDED}
    # figures, not asserted (`pytest tests/ops -s`)
    print(f"\n{ALERT} (threshold {THRESHOLD}) at the webhook {fired_after:.1f}s after "
          f"`farm pause {PAUSED}`: {fired['annotations']}; resolved {resolved_after:.1f}s "
          f"after `farm resume`; {len(ids)} jobs submitted, all succeeded")


def test_the_keda_triggers_queries_read_each_queues_demand_from_prometheus(stack: Stack
                                                                           ) -> None:
    """ops/k8s's ScaledObjects ask Prometheus for each queue's demand: on this real
    Prometheus scraping the real exporter, each query is valid and gives one value."""
    triggers = {}
    for path in sorted((ROOT / "ops" / "k8s").glob("queue-*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ScaledObject":
                meta = doc["spec"]["triggers"][0]["metadata"]
                triggers[path.stem.removeprefix("queue-")] = meta["query"]
    assert {PAUSED, OTHER, "farm-intake"} <= set(triggers), triggers
    for queue, expr in triggers.items():
        def answered(expr: str = expr) -> str | None:
            found = query(stack.prometheus, expr)
            return None if len(found) == 1 else f"{expr!r} gave {found}"

        wait_until(answered, timeout=60, interval=1)
        value = float(query(stack.prometheus, expr)[0]["value"][1])
        assert value >= 0, (queue, value)
