"""The alerts of farm.observe.rules applied to a Snapshot, without Prometheus. Pure.

The conditions are the rule file's, on the snapshot's figures: a queue's depth, its error
rate and job P95 over the last 5 minutes (exact percentiles from Postgres where Prometheus
interpolates within histogram buckets), its pool utilisation, a circuit not closed, the
hold flag, the last hour's spend, each budget's spend against its alert share and (a hard
one's) its limit, an open cost breaker. A budget's and a breaker's threshold is its own
(the alert's ``threshold``), not a setting.

``for:`` — Prometheus fires an alert once its condition has held for the rule's ``for:``
period. Here:
- with ``since=None`` (one look, `farm alerts`) a condition true now fires at once, except
  FarmCircuitOpen, whose period is its threshold: the circuit's own record says since when
  it has not been closed (its last opening less the cooldowns of the re-openings before);
- with a ``since`` mapping (the exporter's webhook loop passes back the ``since`` of the
  previous evaluation) an alert fires once its condition has held continuously for the
  rule's ``for:`` since it was first seen true (or since its known start: the circuit's
  opening, the hold's setting); before that it is pending.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from farm.observe.figures import Snapshot
from farm.observe.rules import (
    BUDGET_ALERT,
    BUDGET_EXHAUSTED,
    CIRCUIT,
    COST,
    COST_BREAKER,
    ERROR_RATE,
    HELD,
    P95,
    QUEUE_DEPTH,
    RULES,
    UTILISATION,
    Rule,
    Thresholds,
    show,
)

Key = tuple[str, tuple[tuple[str, str], ...]]  # alert name, labels


@dataclass(frozen=True)
class Alert:
    rule: Rule
    labels: tuple[tuple[str, str], ...]
    value: float
    threshold: float
    since: float  # when its condition became true (as far as known)
    firing: bool  # False: pending (its for: not yet over)

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def key(self) -> Key:
        return (self.rule.name, self.labels)

    @property
    def summary(self) -> str:
        return self.rule.summary.format(value=show(self.value, self.rule.unit),
                                        threshold=show(self.threshold, self.rule.unit),
                                        **dict(self.labels))

    def as_json(self) -> dict[str, object]:
        return {"alert": self.name, "labels": dict(self.labels),
                "severity": self.rule.severity.value, "value": self.value,
                "threshold": self.threshold, "since": self.since,
                "state": "firing" if self.firing else "pending", "summary": self.summary}


@dataclass(frozen=True)
class Evaluation:
    alerts: tuple[Alert, ...]
    since: Mapping[Key, float] = field(default_factory=dict)  # pass to the next evaluation

    @property
    def firing(self) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if a.firing)

    @property
    def pending(self) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if not a.firing)


# (labels, value, known start or None) of each series over its threshold
Breach = tuple[tuple[tuple[str, str], ...], float, float | None]
# and the series' own threshold (None: the rule's)
Crossing = tuple[tuple[tuple[str, str], ...], float, float | None, float | None]


def crossings(rule: Rule, snap: Snapshot, t: Thresholds) -> Iterator[Crossing]:
    """Every series over its threshold, with the threshold of the rules whose series each
    have their own (budgets, cost breakers)."""
    if rule is BUDGET_ALERT:
        for b in snap.budgets:
            if b.alerting and b.alert_share is not None:
                yield (("budget", b.budget),), b.used, None, b.alert_share
    elif rule is BUDGET_EXHAUSTED:
        for b in snap.budgets:
            if b.exhausted:
                yield (("budget", b.budget),), b.used, None, None
    elif rule is COST_BREAKER:
        for c in snap.cost_breakers:
            if c.open:
                yield ((("scope", c.scope),), float(c.rate_usd_per_min), c.opened_at,
                       float(c.threshold_usd_per_min))
    else:
        for labels, value, known in breaches(rule, snap, t):
            yield labels, value, known, None


def breaches(rule: Rule, snap: Snapshot, t: Thresholds) -> Iterator[Breach]:
    """The rule's condition on the snapshot: every series over its threshold (the rules
    whose threshold is a setting)."""
    limit = rule.threshold(t)
    if rule is QUEUE_DEPTH:
        for q in snap.queues:
            if q.depth > limit:
                yield (("queue", q.queue),), float(q.depth), None
    elif rule is ERROR_RATE:
        for q in snap.queues:
            rate = q.window.error_rate
            if rate is not None and rate > limit:
                yield (("queue", q.queue),), rate, None
    elif rule is P95:
        for q in snap.queues:
            if q.window.p95_s is not None and q.window.p95_s > limit:
                yield (("queue", q.queue),), q.window.p95_s, None
    elif rule is UTILISATION:
        for q in snap.queues:
            if q.utilisation is not None and q.utilisation > limit:
                yield (("queue", q.queue),), q.utilisation, None
    elif rule is CIRCUIT:
        for c in snap.circuits:
            if c.open:
                start = c.not_closed_since
                value = 0.0 if start is None else max(0.0, snap.taken_at - start)
                yield (("model", c.model),), value, start
    elif rule is HELD:
        if snap.hold is not None:
            since = snap.hold.since
            yield (), 0.0 if since is None else max(0.0, snap.taken_at - since), since
    elif rule is COST and snap.cost_usd_per_hour > limit:
        yield (), snap.cost_usd_per_hour, None


def evaluate(snap: Snapshot, t: Thresholds, now: float,
             since: Mapping[Key, float] | None = None) -> Evaluation:
    """What fires now (and what is pending, with a ``since`` mapping; see the module)."""
    alerts: list[Alert] = []
    started: dict[Key, float] = {}
    for rule in RULES:
        period = rule.for_s(t)
        for labels, value, known, own in crossings(rule, snap, t):
            key = (rule.name, labels)
            earlier = None if since is None else since.get(key)
            begin = min(x for x in (earlier, known, now) if x is not None)
            started[key] = begin
            # one look: no for: (but the circuit's period is its threshold)
            one_look = since is None and rule is not CIRCUIT
            firing = one_look or now - begin >= period
            if rule is CIRCUIT:
                value = now - begin  # how long it has not been closed
            threshold = rule.threshold(t) if own is None else own
            alerts.append(Alert(rule, labels, value, threshold, begin, firing))
    return Evaluation(tuple(alerts), started)
