"""A worker process's metrics: the collectors of ``names.WORKER`` in a registry of its own
(not prometheus-client's global one, so that tests can build several), fed by the farm's
worker signals (``farm.worker.events``); the pool gauges are read at scrape time.

Tenants (the cost counter's ``tenant`` label) are bounded by ``TenantLabels``: a tenant's
cost is counted under its own name while it is among the ``names.TENANT_TOP`` tenants with
the most calls in this process, else under ``"other"``. Each call's cost goes to exactly one
series, so sums over tenants stay exact; a tenant that drops out of the top keeps its series
as it was (a counter cannot be moved) and counts under "other" from then on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from farm.jobs import Usage
from farm.observe import names
from farm.worker import events

# queue -> (slots, busy)
PoolView = Callable[[], Mapping[str, tuple[int, int]]]
TOKEN_KINDS = (("input", "input_tokens"), ("output", "output_tokens"),
               ("cache_creation", "cache_creation_input_tokens"),
               ("cache_read", "cache_read_input_tokens"))


class TenantLabels:
    """The label of a tenant: its name while it is among the ``top`` tenants with the most
    calls seen here (a newcomer takes the place of the least-called one once it has more
    calls), else ``"other"``. At most ``tracked`` tenants are counted; tenants first seen
    after that are "other" for good. Thread-safe."""

    def __init__(self, top: int = names.TENANT_TOP, tracked: int = 1000) -> None:
        self._top_n, self._tracked = top, tracked
        self._counts: dict[str, int] = {}
        self._top: set[str] = set()
        self._lock = threading.Lock()

    def label(self, tenant: str) -> str:
        """Count one call of ``tenant``; its label now."""
        with self._lock:
            counts = self._counts
            if tenant not in counts and len(counts) >= self._tracked:
                return names.OTHER
            n = counts[tenant] = counts.get(tenant, 0) + 1
            top = self._top
            if tenant in top:
                return tenant
            if len(top) < self._top_n:
                top.add(tenant)
                return tenant
            least = min(top, key=counts.__getitem__)
            if n > counts[least]:
                top.remove(least)
                top.add(tenant)
                return tenant
            return names.OTHER


class _Pool(Collector):
    """farm_pool_slots and farm_pool_busy, read from the worker when scraped."""

    def __init__(self, view: PoolView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        slots_m, busy_m = names.ALL["farm_pool_slots"], names.ALL["farm_pool_busy"]
        slots = GaugeMetricFamily(slots_m.name, slots_m.help, labels=slots_m.labels)
        busy = GaugeMetricFamily(busy_m.name, busy_m.help, labels=busy_m.labels)
        for queue, (n, used) in sorted(self._view().items()):
            slots.add_metric([queue], n)
            busy.add_metric([queue], used)
        yield slots
        yield busy


def _collector(metric: names.Metric, registry: CollectorRegistry) -> Any:
    if metric.kind is names.Kind.COUNTER:
        return Counter(metric.name, metric.help, metric.labels, registry=registry)
    if metric.kind is names.Kind.HISTOGRAM:
        return Histogram(metric.name, metric.help, metric.labels, registry=registry,
                         buckets=metric.buckets)
    return Gauge(metric.name, metric.help, metric.labels, registry=registry)


class WorkerMetrics:
    """The collectors of one worker process and the handlers of its signals. ``connect()``
    hangs the handlers on ``farm.worker.events``; ``disconnect()`` takes them off."""

    def __init__(self, pool: PoolView | None = None,
                 tenants: TenantLabels | None = None) -> None:
        # no `_created` series: the catalogue (names.exported_names) has none, and they would
        # double the series of every counter and histogram (prometheus-client's own switch,
        # for the process)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.tenants = tenants or TenantLabels()
        made = {m.name: _collector(m, self.registry) for m in names.WORKER
                if m.name not in ("farm_pool_slots", "farm_pool_busy")}
        self.finished = made["farm_jobs_finished_total"]
        self.calls = made["farm_provider_calls_total"]
        self.duration = made["farm_job_duration_seconds"]
        self.latency = made["farm_provider_latency_seconds"]
        self.in_flight = made["farm_calls_in_flight"]
        self.retries = made["farm_retries_total"]
        self.deferrals = made["farm_deferrals_total"]
        self.dead = made["farm_dead_letters_total"]
        self.superseded = made["farm_superseded_total"]
        self.cost = made["farm_cost_usd_total"]
        self.tokens = made["farm_tokens_total"]
        self.memo_hits = made["farm_memo_hits_total"]
        self.memo_saved = made["farm_memo_saved_usd_total"]
        self.registry.register(_Pool(pool or dict))
        self._handlers: tuple[tuple[Any, Callable[..., None]], ...] = (
            (events.call_started, self.on_call_started),
            (events.call_finished, self.on_call_finished),
            (events.job_finished, self.on_job_finished),
            (events.job_deferred, self.on_job_deferred),
            (events.job_retried, self.on_job_retried),
            (events.job_dead, self.on_job_dead),
            (events.late_result, self.on_late_result),
            (events.memo_hit, self.on_memo_hit),
        )

    # --- the handlers (one per signal) ----------------------------------------------
    def on_call_started(self, model: str, **_: Any) -> None:
        self.in_flight.labels(model).inc()

    def on_call_finished(self, model: str, queue: str, tenant: str, outcome: str,
                         latency_s: float, usage: Usage | None, cost: Decimal | None,
                         batch: bool = False, **_: Any) -> None:
        if not batch:  # a batch result was never in flight here, and took the batch's time
            self.in_flight.labels(model).dec()
            self.latency.labels(model).observe(latency_s)
        self.calls.labels(model, outcome).inc()
        label = self.tenants.label(tenant)
        if cost is not None:
            self.cost.labels(queue, model, label).inc(float(cost))
        if usage is not None:
            for kind, field in TOKEN_KINDS:
                n = getattr(usage, field)
                if n:
                    self.tokens.labels(model, kind).inc(n)

    def on_job_finished(self, queue: str, model: str, outcome: str,
                        duration_s: float | None, **_: Any) -> None:
        self.finished.labels(queue, model, outcome).inc()
        if duration_s is not None:
            self.duration.labels(queue).observe(max(0.0, duration_s))

    def on_job_deferred(self, queue: str, reason: str, **_: Any) -> None:
        self.deferrals.labels(queue, reason).inc()

    def on_job_retried(self, queue: str, reason: str, **_: Any) -> None:
        self.retries.labels(queue, reason).inc()

    def on_job_dead(self, queue: str, error_class: str, **_: Any) -> None:
        self.dead.labels(queue, error_class).inc()

    def on_late_result(self, queue: str, **_: Any) -> None:
        self.superseded.labels(queue).inc()

    def on_memo_hit(self, queue: str, model: str, saved: Decimal | None, **_: Any) -> None:
        self.memo_hits.labels(queue, model).inc()
        if saved is not None:
            self.memo_saved.labels(queue, model).inc(float(saved))

    # --- wiring ---------------------------------------------------------------------
    def connect(self) -> WorkerMetrics:
        for signal, handler in self._handlers:
            signal.connect(handler, weak=False, dispatch_uid=self._uid(handler))
        return self

    def disconnect(self) -> None:
        for signal, handler in self._handlers:
            signal.disconnect(handler, dispatch_uid=self._uid(handler))

    def _uid(self, handler: Callable[..., None]) -> str:
        return f"farm.metrics.{id(self)}.{handler.__name__}"
