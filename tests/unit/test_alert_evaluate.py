"""The rules applied to a Snapshot without Prometheus (farm.observe.evaluate), the webhook's
payloads (farm.observe.webhook), the exporter's metric families and `farm top`'s frame."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from farm.capacity.circuit import BreakerConfig, BreakerState, BreakerValue
from farm.observe import names
from farm.observe.evaluate import evaluate
from farm.observe.exporter import ClusterCollector, families
from farm.observe.figures import Circuit, Hold, LimiterUse, QueueFigures, Snapshot, Window
from farm.observe.rules import DEFAULTS, Thresholds
from farm.observe.snapshot import circuit
from farm.observe.top import frame
from farm.observe.webhook import ZERO_TIME, Notifier, payload, rfc3339

NOW = 1_800_000_000.0
QUIET = Snapshot(taken_at=NOW, queues=(QueueFigures("haiku-simple"),
                                       QueueFigures("sonnet-complex")),
                 circuits=(Circuit("claude-haiku-4-5", "closed"),))


def fired(snap: Snapshot, t: Thresholds = DEFAULTS) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                            tuple[float, float]]:
    return {a.key: (a.value, a.threshold) for a in evaluate(snap, t, NOW).firing}


def queue(name: str = "haiku-simple", **kw: object) -> QueueFigures:
    return QueueFigures(name, **kw)  # type: ignore[arg-type]


def test_a_quiet_farm_fires_nothing() -> None:
    result = evaluate(QUIET, DEFAULTS, NOW)
    assert result.alerts == () and result.firing == ()


def test_queue_depth_counts_lists_and_unacknowledged_and_fires_above_the_threshold() -> None:
    at = replace(QUIET, queues=(queue(waiting=400, unacked=100), queue("sonnet-complex",
                                                                        waiting=501)))
    assert at.queues[0].depth == 500
    assert fired(at) == {("FarmQueueDepthHigh", (("queue", "sonnet-complex"),)): (501.0, 500)}


def test_error_rate_over_the_window() -> None:
    at = replace(QUIET, queues=(queue(window=Window(finished=100, failed=3)),
                                queue("sonnet-complex", window=Window(finished=50, failed=1))))
    assert fired(at) == {("FarmErrorRateHigh", (("queue", "haiku-simple"),)): (0.03, 0.02)}
    none = replace(QUIET, queues=(queue(window=Window(finished=0, failed=0)),))
    assert fired(none) == {}  # no job finished: no rate, nothing fires


def test_p95_and_utilisation() -> None:
    at = replace(QUIET, queues=(queue(window=Window(10, 0, 2.0, 31.0, 40.0), slots=100,
                                      busy=91),
                                queue("sonnet-complex", window=Window(10, 0, 2.0, 30.0, 90.0),
                                      slots=100, busy=90)))
    assert fired(at) == {("FarmJobP95Slow", (("queue", "haiku-simple"),)): (31.0, 30.0),
                         ("FarmPoolSaturated", (("queue", "haiku-simple"),)): (0.91, 0.9)}
    # no worker heartbeats: no utilisation, not 0/0
    assert queue(slots=0, busy=0).utilisation is None


def test_a_circuit_fires_once_it_has_not_been_closed_for_its_threshold() -> None:
    young = replace(QUIET, circuits=(Circuit("claude-sonnet-5-5", "open", NOW - 599,
                                             NOW - 599),))
    assert fired(young) == {}
    old = replace(QUIET, circuits=(Circuit("claude-sonnet-5-5", "half_open", NOW - 30,
                                           NOW - 700),))
    assert fired(old) == {("FarmCircuitOpen", (("model", "claude-sonnet-5-5"),)):
                          (700.0, 600.0)}
    result = evaluate(young, DEFAULTS, NOW)
    assert [a.firing for a in result.alerts] == [False]  # pending: it counts already


def test_the_hold_and_the_cost_rate() -> None:
    at = replace(QUIET, hold=Hold("spend limit reached", NOW - 60), cost_usd_per_hour=50.01)
    assert fired(at) == {("FarmHeld", ()): (60.0, 0.0), ("FarmCostRateHigh", ()): (50.01, 50.0)}
    assert fired(replace(QUIET, cost_usd_per_hour=50.0)) == {}


def test_the_thresholds_are_the_ones_given() -> None:
    t = replace(DEFAULTS, queue_depth=5)
    assert fired(replace(QUIET, queues=(queue(waiting=6),)), t) == {
        ("FarmQueueDepthHigh", (("queue", "haiku-simple"),)): (6.0, 5)}


def test_summaries_give_value_and_threshold() -> None:
    at = replace(QUIET, queues=(queue(waiting=600, window=Window(100, 5)),))
    text = {a.name: a.summary for a in evaluate(at, DEFAULTS, NOW).firing}
    assert text == {
        "FarmQueueDepthHigh": "queue haiku-simple: 600 messages waiting (threshold 500)",
        "FarmErrorRateHigh": "queue haiku-simple: 5% of the jobs finished in 5 minutes failed "
                             "(threshold 2%)"}
    [alert] = [a for a in evaluate(at, DEFAULTS, NOW).firing if a.name == "FarmQueueDepthHigh"]
    assert alert.as_json() == {
        "alert": "FarmQueueDepthHigh", "labels": {"queue": "haiku-simple"},
        "severity": "warning", "value": 600.0, "threshold": 500, "since": NOW,
        "state": "firing", "summary": "queue haiku-simple: 600 messages waiting (threshold 500)"}


def test_with_memory_an_alert_is_pending_for_its_for_period() -> None:
    deep = replace(QUIET, queues=(queue(waiting=600),))
    first = evaluate(deep, DEFAULTS, NOW, {})
    assert first.firing == () and [a.name for a in first.pending] == ["FarmQueueDepthHigh"]
    later = evaluate(deep, DEFAULTS, NOW + 299, first.since)
    assert later.firing == ()
    due = evaluate(deep, DEFAULTS, NOW + 300, later.since)
    assert [(a.name, a.since) for a in due.firing] == [("FarmQueueDepthHigh", NOW)]
    # a look with the condition gone forgets it: it starts over
    gone = evaluate(QUIET, DEFAULTS, NOW + 310, due.since)
    assert gone.alerts == () and gone.since == {}
    again = evaluate(deep, DEFAULTS, NOW + 320, gone.since)
    assert again.firing == () and again.pending[0].since == NOW + 320


def test_with_memory_a_circuit_counts_from_its_known_opening() -> None:
    snap = replace(QUIET, circuits=(Circuit("m", "open", NOW - 650, NOW - 650),))
    assert [a.name for a in evaluate(snap, DEFAULTS, NOW, {}).firing] == ["FarmCircuitOpen"]


def test_a_reopened_circuit_counts_its_earlier_cooldowns() -> None:
    """The breaker keeps only its last opening; each re-opening before it followed a
    cooldown (doubled each time, capped): the circuit has not been closed since at least
    the last opening less those cooldowns."""
    config = BreakerConfig(cooldown_s=15, max_cooldown_s=50)

    class Fake:
        def __init__(self, value: BreakerValue) -> None:
            self.config, self._value = config, value

        def value(self, model: str) -> tuple[BreakerValue, float]:
            return self._value, NOW

    reopened = BreakerValue(BreakerState.HALF_OPEN, 0, (), NOW - 10, 3, ())
    got = circuit(Fake(reopened), "m")  # type: ignore[arg-type]
    assert got == Circuit("m", "half_open", NOW - 10, NOW - 10 - (15 + 30 + 50))
    closed = BreakerValue(BreakerState.CLOSED, 2, (), 0.0, 0, ())
    assert circuit(Fake(closed), "m") == Circuit("m", "closed")  # type: ignore[arg-type]


# --- the webhook ------------------------------------------------------------------------

def test_the_webhook_sends_changes_only_in_alertmanagers_format() -> None:
    t = replace(DEFAULTS, for_s=0)
    notifier = Notifier(t)
    deep = replace(QUIET, queues=(queue(waiting=600),))
    assert notifier.step(QUIET, NOW) is None
    body = notifier.step(deep, NOW)
    assert body is not None and body["version"] == "4" and body["status"] == "firing"
    [alert] = body["alerts"]
    assert alert["status"] == "firing" and alert["endsAt"] == ZERO_TIME
    assert alert["labels"] == {"alertname": "FarmQueueDepthHigh", "severity": "warning",
                               "queue": "haiku-simple"}
    assert alert["annotations"]["summary"] == (
        "queue haiku-simple: 600 messages waiting (threshold 500)")
    assert alert["annotations"]["value"] == "600"
    assert alert["annotations"]["threshold"] == "500"
    assert alert["startsAt"] == rfc3339(NOW) == "2027-01-15T08:00:00Z"
    assert body["commonLabels"] == alert["labels"]
    assert notifier.step(replace(deep, taken_at=NOW + 15), NOW + 15) is None  # no change
    resolved = notifier.step(QUIET, NOW + 30)
    assert resolved is not None and resolved["status"] == "resolved"
    [gone] = resolved["alerts"]
    assert gone["status"] == "resolved" and gone["endsAt"] == rfc3339(NOW + 30)
    assert gone["fingerprint"] == alert["fingerprint"]


def test_a_payload_with_firing_and_resolved_alerts() -> None:
    t = replace(DEFAULTS, for_s=0)
    a = evaluate(replace(QUIET, queues=(queue(waiting=600),)), t, NOW).firing[0]
    b = evaluate(replace(QUIET, cost_usd_per_hour=99.0), t, NOW).firing[0]
    body = payload([a], [b], t, NOW)
    assert body["status"] == "firing"
    assert [x["status"] for x in body["alerts"]] == ["firing", "resolved"]
    assert body["commonLabels"] == {"severity": "warning"}


# --- the exporter's families and `farm top` ---------------------------------------------

BUSY = Snapshot(
    taken_at=NOW, queues=(queue(waiting=7, unacked=3, delayed=1, queued_jobs=9,
                                oldest_wait_s=42.0, slots=10, busy=9,
                                window=Window(20, 1, 1.0, 3.0, 4.0)),),
    jobs_by_status=(("queued", 9), ("succeeded", 20)), total=Window(20, 1, 1.0, 3.0, 4.0),
    circuits=(Circuit("claude-sonnet-5-5", "open", NOW - 5, NOW - 5),
              Circuit("claude-haiku-4-5", "closed")),
    limiters=(LimiterUse("claude-sonnet-5-5", "rpm", 0.5),),
    hold=Hold("spend limit reached", NOW - 1), cost_usd_per_hour=1.25,
    cost_by_model=(("claude-sonnet-5-5", 1.25),))


def test_the_exporter_serves_the_cluster_metrics_of_the_snapshot() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(lambda: BUSY))
    text = generate_latest(registry).decode()
    assert 'farm_queue_depth{queue="haiku-simple"} 10.0' in text
    assert 'farm_queue_demand{queue="haiku-simple"} 9.0' in text  # not the delayed one
    assert 'farm_queue_oldest_wait_seconds{queue="haiku-simple"} 42.0' in text
    assert 'farm_jobs{status="queued"} 9.0' in text and 'farm_jobs{status="dead"} 0.0' in text
    assert 'farm_circuit_open{model="claude-sonnet-5-5",state="open"} 1.0' in text
    assert 'farm_circuit_open{model="claude-haiku-4-5",state="closed"} 0.0' in text
    assert 'farm_limiter_use_ratio{kind="rpm",model="claude-sonnet-5-5"} 0.5' in text
    assert "farm_hold 1.0" in text
    served = {f.name for f in families(BUSY)}
    assert served == {m.name for m in names.CLUSTER}


def test_without_postgres_the_job_counts_are_left_out() -> None:
    down = replace(BUSY, problems=("Postgres: OperationalError: refused",))
    assert "farm_jobs" not in {f.name for f in families(down)}


@pytest.mark.parametrize("snap", [QUIET, BUSY])
def test_top_prints_one_frame(snap: Snapshot) -> None:
    console = Console(width=160, record=True, color_system=None)
    console.print(frame(snap, evaluate(snap, DEFAULTS, NOW)))
    text = console.export_text()
    assert "throughput" in text and "haiku-simple" in text
    if snap is BUSY:
        assert "HELD: spend limit reached" in text and "FarmHeld" in text
        assert "9/10" in text and "90.0%" in text and "$1.25/h" in text
        assert "rpm 50%" in text and "open" in text
    else:
        assert "no alert firing" in text
