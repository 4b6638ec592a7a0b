"""The cluster exporter (`farm exporter`): a prometheus-client collector that takes a fresh
Snapshot on each scrape and serves the metrics of ``names.CLUSTER``. It only reads (Redis
and Postgres), so two exporters can run side by side; the rules aggregate with ``max``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from farm.observe import names
from farm.observe.figures import Snapshot

STATUSES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
_HELP = {m.name: m.help for m in names.CLUSTER}


def _gauge(name: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    declared = names.ALL[name]
    assert declared.where == "cluster" and declared.labels == labels, name
    return GaugeMetricFamily(name, _HELP[name], labels=list(labels))


def families(snap: Snapshot) -> list[GaugeMetricFamily]:
    """The cluster metrics of one snapshot."""
    depth = _gauge("farm_queue_depth", ("queue",))
    demand = _gauge("farm_queue_demand", ("queue",))
    oldest = _gauge("farm_queue_oldest_wait_seconds", ("queue",))
    for q in snap.queues:
        depth.add_metric([q.queue], q.depth)
        demand.add_metric([q.queue], q.demand)
        oldest.add_metric([q.queue], q.oldest_wait_s or 0.0)
    jobs = _gauge("farm_jobs", ("status",))
    counts = dict(snap.jobs_by_status)
    for status in sorted(set(STATUSES) | set(counts)):
        jobs.add_metric([status], counts.get(status, 0))
    circuit = _gauge("farm_circuit_open", ("model", "state"))
    for c in snap.circuits:
        circuit.add_metric([c.model, c.state], 1.0 if c.open else 0.0)
    use = _gauge("farm_limiter_use_ratio", ("model", "kind"))
    for u in snap.limiters:
        use.add_metric([u.model, u.kind], u.ratio)
    hold = _gauge("farm_hold")
    hold.add_metric([], 1.0 if snap.hold is not None else 0.0)
    families = [depth, demand, oldest, circuit, use, hold]
    if not any(p.startswith("Postgres") for p in snap.problems):
        families.insert(2, jobs)  # no job counts rather than zeros while Postgres is away
    return families + spend_families(snap)


def spend_families(snap: Snapshot) -> list[GaugeMetricFamily]:
    """The budgets (none while Postgres is away: no series rather than zeros) and the
    configured cost breakers."""
    limit = _gauge("farm_budget_limit_usd", ("budget", "scope", "period", "mode"))
    spent = _gauge("farm_budget_spent_usd", ("budget",))
    reserved = _gauge("farm_budget_reserved_usd", ("budget",))
    share = _gauge("farm_budget_alert_share", ("budget",))
    refusing = _gauge("farm_budget_refusing", ("budget",))
    for b in snap.budgets:
        limit.add_metric([b.budget, b.scope, b.period, b.mode], float(b.limit_usd))
        spent.add_metric([b.budget], float(b.spent_usd))
        reserved.add_metric([b.budget], float(b.reserved_usd))
        refusing.add_metric([b.budget], 1.0 if b.refusing else 0.0)
        if b.alert_share is not None:
            share.add_metric([b.budget], b.alert_share)
    rate = _gauge("farm_cost_rate_usd_per_minute", ("scope",))
    is_open = _gauge("farm_cost_breaker_open", ("scope",))
    threshold = _gauge("farm_cost_breaker_threshold_usd_per_minute", ("scope",))
    for c in snap.cost_breakers:
        rate.add_metric([c.scope], float(c.rate_usd_per_min))
        is_open.add_metric([c.scope], 1.0 if c.open else 0.0)
        threshold.add_metric([c.scope], float(c.threshold_usd_per_min))
    return [limit, spent, reserved, share, refusing, rate, is_open, threshold]


class ClusterCollector(Collector):
    """Takes a snapshot (``take``) on every scrape; its errors fail the scrape (Prometheus
    then sees the target down) rather than serve stale figures."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self._take = take

    def collect(self) -> Iterator[Metric]:
        yield from families(self._take())
