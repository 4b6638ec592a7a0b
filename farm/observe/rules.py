"""The farm's alerts, defined once: each alert's threshold (a Settings field, FARM_ALERT_*),
its PromQL expression over the metric catalogue (farm.observe.names), its ``for:`` period,
severity and annotations. ``render_rules`` writes them as a Prometheus rule file
(``ops/prometheus/farm-alerts.yml`` is the rendering of the defaults);
``farm.observe.evaluate`` applies the same thresholds to a snapshot taken without
Prometheus (`farm alerts`, the exporter's webhook). Pure: no I/O.

Every expression aggregates with ``max``/``sum by``: two exporters scraped side by side
give the same answer as one (``max``), and a queue's workers add up (``sum``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from farm.settings import Settings

GROUP = "farm"
RATE_WINDOW = "5m"  # error rate and P95 are over the last 5 minutes
COST_WINDOW = "1h"  # the cost rate is the last hour's spend


@dataclass(frozen=True)
class Thresholds:
    """Where each alert fires. Built from the settings (`thresholds(settings)`): the
    FARM_ALERT_* fields of farm.settings are the one definition of every value."""

    queue_depth: int
    error_rate: float
    p95_s: float
    utilisation: float
    circuit_open_s: float
    cost_usd_per_hour: float
    for_s: float


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(
        queue_depth=settings.alert_queue_depth, error_rate=settings.alert_error_rate,
        p95_s=settings.alert_p95_s, utilisation=settings.alert_utilisation,
        circuit_open_s=settings.alert_circuit_open_s,
        cost_usd_per_hour=settings.alert_cost_usd_per_hour, for_s=settings.alert_for_s)


# the defaults of the settings' fields (no environment read, nothing validated twice)
DEFAULTS = thresholds(Settings.model_construct())


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Unit(StrEnum):
    COUNT = "count"
    RATIO = "ratio"  # shown as a percentage
    SECONDS = "seconds"
    USD_PER_HOUR = "usd_per_hour"
    USD_PER_MINUTE = "usd_per_minute"
    FLAG = "flag"


@dataclass(frozen=True)
class Rule:
    """One alert. ``summary`` is a template: ``{value}``, ``{threshold}`` and the labels in
    ``by`` (``{queue}``, ``{model}``) are filled by Prometheus's templating in the rule
    file and by Python in `farm alerts`.

    ``per_series``: the threshold is each series' own (a budget's alert share, a breaker's
    threshold), not a setting: this PromQL, with ``%q`` standing for the value of the first
    label of ``by``, reads it for the rule file's annotations; `farm alerts` takes it from
    the snapshot."""

    name: str
    by: tuple[str, ...]  # the labels an alert of this rule carries (one alert per value)
    severity: Severity
    unit: Unit
    summary: str
    description: str
    per_series: str = ""

    def threshold(self, t: Thresholds) -> float:
        return float(_THRESHOLD[self.name](t))

    def for_s(self, t: Thresholds) -> float:
        return float(_FOR[self.name](t))

    def expr(self, t: Thresholds) -> str:
        return _EXPR[self.name].format(threshold=number(self.threshold(t)), w=RATE_WINDOW,
                                       cw=COST_WINDOW)


QUEUE_DEPTH = Rule(
    "FarmQueueDepthHigh", ("queue",), Severity.WARNING, Unit.COUNT,
    "queue {queue}: {value} messages waiting (threshold {threshold})",
    "Every priority list, delayed and unacknowledged message of the queue. The workers do "
    "not keep up, are paused or are gone: `farm top`, `farm limits`, `make workers`.")
ERROR_RATE = Rule(
    "FarmErrorRateHigh", ("queue",), Severity.WARNING, Unit.RATIO,
    "queue {queue}: {value} of the jobs finished in 5 minutes failed (threshold "
    "{threshold})",
    "Failed and dead jobs over succeeded, failed and dead ones: `farm dlq list` says why.")
P95 = Rule(
    "FarmJobP95Slow", ("queue",), Severity.WARNING, Unit.SECONDS,
    "queue {queue}: job P95 {value} over 5 minutes (threshold {threshold})",
    "Jobs from created to finished, waiting included: capacity, limits or a slow model.")
UTILISATION = Rule(
    "FarmPoolSaturated", ("queue",), Severity.WARNING, Unit.RATIO,
    "queue {queue}: {value} of the worker slots busy (threshold {threshold})",
    "Busy slots over slots of the workers serving the queue: add workers or concurrency.")
CIRCUIT = Rule(
    "FarmCircuitOpen", ("model",), Severity.CRITICAL, Unit.FLAG,
    "model {model}: circuit not closed for longer than {threshold}",
    "The model keeps failing (529, 5xx, timeouts): its jobs wait or run on the fallback "
    "model. `farm limits` shows the breaker.")
HELD = Rule(
    "FarmHeld", (), Severity.CRITICAL, Unit.FLAG,
    "the farm is on hold (spend limit reached)",
    "No job runs until the spend limit is raised and `farm hold --release` is run.")
COST = Rule(
    "FarmCostRateHigh", (), Severity.WARNING, Unit.USD_PER_HOUR,
    "spending {value} an hour (threshold {threshold})",
    "The cost of the provider calls of the last hour: `farm report` says which queue, "
    "model and tenant.")

BUDGET_ALERT = Rule(
    "FarmBudgetAlert", ("budget",), Severity.WARNING, Unit.RATIO,
    "budget {budget}: {value} of its limit spent (alerts at {threshold})",
    "The budget's spend in its current period reached its alert share (a soft budget's, or "
    "a hard one's alert_at). A soft budget never blocks. `farm budget list`; "
    "`farm report` says what spent.",
    per_series="max(farm_budget_alert_share{budget=%q})")
BUDGET_EXHAUSTED = Rule(
    "FarmBudgetExhausted", ("budget",), Severity.CRITICAL, Unit.RATIO,
    "budget {budget}: {value} of its hard limit spent, calls turned away (threshold "
    "{threshold})",
    "A call's worst case no longer fits what is left (or the limit is spent): the calls the "
    "budget covers wait (or fail as budget_exceeded, as the budget says) "
    "until its period ends or it is raised: `farm budget list`, `farm budget set`.")
COST_BREAKER = Rule(
    "FarmCostBreakerOpen", ("scope",), Severity.CRITICAL, Unit.USD_PER_MINUTE,
    "cost breaker {scope} open: spending {value} a minute (opens at {threshold})",
    "The spend rate over the breaker's window reached its threshold "
    "(FARM_COST_BREAKER_USD_PER_MIN, FARM_COST_BREAKER_MODEL_USD_PER_MIN): jobs are "
    "deferred until it falls under FARM_COST_BREAKER_CLOSE_SHARE of it. `farm report` "
    "says what spent.",
    per_series="max(farm_cost_breaker_threshold_usd_per_minute{scope=%q})")

RULES: tuple[Rule, ...] = (QUEUE_DEPTH, ERROR_RATE, P95, UTILISATION, CIRCUIT, HELD, COST,
                           BUDGET_ALERT, BUDGET_EXHAUSTED, COST_BREAKER)
BY_NAME = {r.name: r for r in RULES}

_FINISHED = "farm_jobs_finished_total"
_EXPR = {
    QUEUE_DEPTH.name: "max by (queue) (farm_queue_depth) > {threshold}",
    ERROR_RATE.name: (
        f'sum by (queue) (rate({_FINISHED}{{{{outcome=~"failed|dead"}}}}[{{w}}])) / '
        f'sum by (queue) (rate({_FINISHED}{{{{outcome=~"succeeded|failed|dead"}}}}[{{w}}])) '
        "> {threshold}"),
    P95.name: ("histogram_quantile(0.95, sum by (queue, le) "
               "(rate(farm_job_duration_seconds_bucket[{w}]))) > {threshold}"),
    UTILISATION.name: ("sum by (queue) (farm_pool_busy) / sum by (queue) (farm_pool_slots) "
                       "> {threshold}"),
    CIRCUIT.name: "max by (model) (farm_circuit_open) > 0",
    HELD.name: "max(farm_hold) > 0",
    COST.name: "sum(rate(farm_cost_usd_total[{cw}])) * 3600 > {threshold}",
    # spent / limit: the alert's value is the share of the limit spent
    BUDGET_ALERT.name: ("max by (budget) (farm_budget_spent_usd) / max by (budget) "
                        "(farm_budget_limit_usd) >= max by (budget) (farm_budget_alert_share)"),
    # spent to its limit, or turning calls away (their worst case does not fit what is left)
    BUDGET_EXHAUSTED.name: ("max by (budget) (farm_budget_spent_usd) / max by (budget) "
                            '(farm_budget_limit_usd{{mode="hard"}}) >= {threshold} or '
                            "(max by (budget) (farm_budget_spent_usd) / max by (budget) "
                            '(farm_budget_limit_usd{{mode="hard"}}) and max by (budget) '
                            "(farm_budget_refusing) > 0)"),
    # the value is the spend rate, while the breaker is open
    COST_BREAKER.name: ("max by (scope) (farm_cost_rate_usd_per_minute) and "
                        "max by (scope) (farm_cost_breaker_open) > 0"),
}
_THRESHOLD: dict[str, Callable[[Thresholds], float]] = {
    QUEUE_DEPTH.name: lambda t: t.queue_depth, ERROR_RATE.name: lambda t: t.error_rate,
    P95.name: lambda t: t.p95_s, UTILISATION.name: lambda t: t.utilisation,
    CIRCUIT.name: lambda t: t.circuit_open_s, HELD.name: lambda t: 0,
    COST.name: lambda t: t.cost_usd_per_hour,
    BUDGET_ALERT.name: lambda t: 0, BUDGET_EXHAUSTED.name: lambda t: 1,  # 0: per series
    COST_BREAKER.name: lambda t: 0,
}
_FOR: dict[str, Callable[[Thresholds], float]] = {
    QUEUE_DEPTH.name: lambda t: t.for_s, ERROR_RATE.name: lambda t: t.for_s,
    P95.name: lambda t: t.for_s, UTILISATION.name: lambda t: t.for_s,
    CIRCUIT.name: lambda t: t.circuit_open_s, HELD.name: lambda t: 0,
    COST.name: lambda t: 0,
    # a budget's spend does not fall within its period, a breaker holds for a while anyway
    BUDGET_ALERT.name: lambda t: 0, BUDGET_EXHAUSTED.name: lambda t: 0,
    COST_BREAKER.name: lambda t: 0,
}


def number(value: float) -> str:
    """A threshold as PromQL writes it: 500, 0.02, 30."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def duration(seconds: float) -> str:
    """Prometheus's duration: 5m, 90s, 1h, 1h30m."""
    total = round(seconds)
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)


def show(value: float, unit: Unit) -> str:
    """A value for people, the way the annotations write it."""
    if unit is Unit.RATIO:
        return f"{100 * value:.3g}%"
    if unit is Unit.SECONDS:
        return f"{value:.3g}s"
    if unit in (Unit.USD_PER_HOUR, Unit.USD_PER_MINUTE):
        return f"${value:,.2f}"
    if unit is Unit.FLAG:
        return duration(value)
    return f"{value:,.0f}"


_PROM_VALUE = {Unit.COUNT: "{{ $value | humanize }}",
               Unit.RATIO: "{{ $value | humanizePercentage }}",
               Unit.SECONDS: "{{ $value | humanize }}s",
               Unit.USD_PER_HOUR: "${{ $value | printf \"%.2f\" }}",
               Unit.USD_PER_MINUTE: "${{ $value | printf \"%.2f\" }}",
               Unit.FLAG: "{{ $value }}"}


def rule_annotations(rule: Rule, t: Thresholds) -> dict[str, str]:
    """The rule file's annotations: Prometheus fills the value and the labels."""
    fill = {label: f"{{{{ $labels.{label} }}}}" for label in rule.by}
    shown = show(rule.threshold(t), rule.unit)
    if rule.per_series:  # the series' own threshold, read by a query of the template
        read = json.dumps(rule.per_series)  # a Go string literal too
        shown = (f"{{{{ with printf {read} $labels.{rule.by[0]} | query }}}}"
                 + _PROM_VALUE[rule.unit].replace("$value", ". | first | value")
                 + "{{ end }}")
    summary = rule.summary.format(value=_PROM_VALUE[rule.unit], threshold=shown, **fill)
    return {"summary": summary, "description": rule.description,
            "value": _PROM_VALUE[rule.unit], "threshold": shown}


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def render_rules(t: Thresholds = DEFAULTS) -> str:
    """The Prometheus rule file of every alert, with these thresholds (YAML)."""
    lines = ["# Generated by farm.observe.rules.render_rules: edit the FARM_ALERT_* settings",
             "# or farm/observe/rules.py, not this file.",
             "groups:", f"  - name: {GROUP}", "    rules:"]
    for rule in RULES:
        lines.append(f"      - alert: {rule.name}")
        lines.append(f"        expr: {_q(rule.expr(t))}")
        if rule.for_s(t) > 0:
            lines.append(f"        for: {duration(rule.for_s(t))}")
        lines.append("        labels:")
        lines.append(f"          severity: {rule.severity.value}")
        lines.append("        annotations:")
        for key, value in rule_annotations(rule, t).items():
            lines.append(f"          {key}: {_q(value)}")
    return "\n".join(lines) + "\n"
