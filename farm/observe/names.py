"""The metric catalogue: every metric the farm exports, its kind, labels and buckets. The
worker's collectors, the exporter, the alert rules and the dashboard all use these names;
a test checks that the rules and the dashboard name no other.

Labels are bounded: queues and models come from the configuration, outcomes from
enumerations, tenants are cut to the top ``TENANT_TOP`` per process (the rest is
``"other"``). A job id is never a label. Budget ids (``budget``) are the operator's, a few
by nature (`farm budget set`); the cost breakers' ``scope`` is 'all' or a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


# seconds; 2, 5, 15 and 30 are edges so that those thresholds (and P50/P95/P99 near them)
# are exact
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0)
TENANT_TOP = 20
OTHER = "other"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    where: str = "worker"  # "worker": each worker process's /metrics; "cluster": the exporter


WORKER = (
    Metric("farm_jobs_finished_total", Kind.COUNTER,
           "Jobs finished, by outcome (succeeded, failed, dead, cancelled).",
           ("queue", "model", "outcome")),
    Metric("farm_provider_calls_total", Kind.COUNTER,
           "Provider calls, by outcome: ok or the error class (rate_limited, overloaded, "
           "server_error, timeout, connection, abandoned, bad_request, ...).",
           ("model", "outcome")),
    Metric("farm_job_duration_seconds", Kind.HISTOGRAM,
           "Jobs from created to finished.", ("queue",), DURATION_BUCKETS),
    Metric("farm_provider_latency_seconds", Kind.HISTOGRAM,
           "Provider call latency.", ("model",), LATENCY_BUCKETS),
    Metric("farm_pool_slots", Kind.GAUGE, "Worker slots (threads) serving the queue.",
           ("queue",)),
    Metric("farm_pool_busy", Kind.GAUGE, "Worker slots running a job of the queue.",
           ("queue",)),
    Metric("farm_calls_in_flight", Kind.GAUGE, "Provider calls under way.", ("model",)),
    Metric("farm_retries_total", Kind.COUNTER, "Retries scheduled, by error class.",
           ("queue", "reason")),
    Metric("farm_deferrals_total", Kind.COUNTER,
           "Jobs handed back to wait without a call (capacity, circuit, paused, held).",
           ("queue", "reason")),
    Metric("farm_dead_letters_total", Kind.COUNTER, "Jobs dead-lettered, by error class.",
           ("queue", "error_class")),
    Metric("farm_superseded_total", Kind.COUNTER,
           "Late results recorded as superseded (their job had been started again).",
           ("queue",)),
    Metric("farm_cost_usd_total", Kind.COUNTER, "Cost of provider calls, USD.",
           ("queue", "model", "tenant")),
    Metric("farm_tokens_total", Kind.COUNTER,
           "Tokens, by kind (input, output, cache_creation, cache_read).", ("model", "kind")),
    Metric("farm_memo_hits_total", Kind.COUNTER,
           "Jobs answered from an identical earlier job's answer, without a call (farm.memo).",
           ("queue", "model")),
    Metric("farm_memo_saved_usd_total", Kind.COUNTER,
           "What the memo hits' answers cost when they were made, USD: the money not spent.",
           ("queue", "model")),
)

CLUSTER = (
    Metric("farm_queue_depth", Kind.GAUGE,
           "Messages waiting: every priority list, delayed and unacknowledged.", ("queue",),
           where="cluster"),
    Metric("farm_queue_demand", Kind.GAUGE,
           "Jobs that hold or want a worker slot: every priority list and the "
           "unacknowledged messages not waiting for an ETA (the pod autoscaler's signal).",
           ("queue",), where="cluster"),
    Metric("farm_queue_oldest_wait_seconds", Kind.GAUGE,
           "Age of the oldest queued job.", ("queue",), where="cluster"),
    Metric("farm_jobs", Kind.GAUGE, "Jobs by status.", ("status",), where="cluster"),
    Metric("farm_circuit_open", Kind.GAUGE, "1 while the model's circuit is not closed.",
           ("model", "state"), where="cluster"),
    Metric("farm_limiter_use_ratio", Kind.GAUGE,
           "Use of the model's effective limit (1 = at the limit).", ("model", "kind"),
           where="cluster"),
    Metric("farm_hold", Kind.GAUGE, "1 while the farm is on hold (spend limit).",
           where="cluster"),
    Metric("farm_budget_limit_usd", Kind.GAUGE,
           "A budget's limit over its period (UTC hour, day or month), USD; mode hard "
           "blocks at it, soft only alerts.", ("budget", "scope", "period", "mode"),
           where="cluster"),
    Metric("farm_budget_spent_usd", Kind.GAUGE,
           "Spent in the budget's current period by calls that ended, USD.", ("budget",),
           where="cluster"),
    Metric("farm_budget_reserved_usd", Kind.GAUGE,
           "Reserved in the budget's current period by calls in flight (their worst case), "
           "USD.", ("budget",), where="cluster"),
    Metric("farm_budget_refusing", Kind.GAUGE,
           "1 while a hard budget turns calls away (their worst case does not fit what is "
           "left; it did so in the last 2 minutes), else 0.", ("budget",), where="cluster"),
    Metric("farm_budget_alert_share", Kind.GAUGE,
           "The share of its limit a budget alerts at (FarmBudgetAlert): every soft budget "
           "has one, a hard one only when set; a hard budget without one alerts at its "
           "limit only (FarmBudgetExhausted).", ("budget",), where="cluster"),
    Metric("farm_cost_rate_usd_per_minute", Kind.GAUGE,
           "Spend rate over the cost breaker's window, USD a minute, of each configured "
           "breaker: 'all' or a model.", ("scope",), where="cluster"),
    Metric("farm_cost_breaker_open", Kind.GAUGE,
           "1 while the cost breaker of the scope is open (jobs deferred).", ("scope",),
           where="cluster"),
    Metric("farm_cost_breaker_threshold_usd_per_minute", Kind.GAUGE,
           "The spend rate the cost breaker of the scope opens at, USD a minute.",
           ("scope",), where="cluster"),
)

ALL = {m.name: m for m in (*WORKER, *CLUSTER)}


def exported_names() -> set[str]:
    """Every series name Prometheus sees (histograms add _bucket, _sum and _count)."""
    names: set[str] = set()
    for m in ALL.values():
        names.add(m.name)
        if m.kind is Kind.HISTOGRAM:
            names |= {f"{m.name}_bucket", f"{m.name}_sum", f"{m.name}_count"}
    return names
