"""A Message Batch result in the worker's metrics (farm.observe.metrics): counted as a
call with its outcome, cost and tokens, but never in flight here and not in the provider's
latency (a batch's hours are not the model's seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from farm.jobs import Usage
from farm.observe.metrics import WorkerMetrics
from farm.worker import events

HAIKU = "claude-haiku-4-5"


@pytest.fixture
def metrics() -> Iterator[WorkerMetrics]:
    made = WorkerMetrics(dict).connect()
    yield made
    made.disconnect()


def value(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    found: float | None = m.registry.get_sample_value(name, labels)
    return found


def test_a_batch_result_counts_its_call_cost_and_tokens_but_no_latency(
        metrics: WorkerMetrics) -> None:
    events.call_finished.send(None, model=HAIKU, queue="haiku-simple", tenant="acme",
                              outcome="ok", latency_s=3600.0, cost=Decimal("0.005"),
                              usage=Usage(input_tokens=100, output_tokens=20), batch=True)
    assert value(metrics, "farm_provider_calls_total", model=HAIKU, outcome="ok") == 1
    assert value(metrics, "farm_cost_usd_total", queue="haiku-simple", model=HAIKU,
                 tenant="acme") == pytest.approx(0.005)
    assert value(metrics, "farm_tokens_total", model=HAIKU, kind="output") == 20
    assert value(metrics, "farm_provider_latency_seconds_count", model=HAIKU) in (None, 0)
    assert value(metrics, "farm_calls_in_flight", model=HAIKU) in (None, 0)


def test_a_synchronous_call_still_counts_its_latency(metrics: WorkerMetrics) -> None:
    events.call_started.send(None, model=HAIKU)
    events.call_finished.send(None, model=HAIKU, queue="haiku-simple", tenant="acme",
                              outcome="ok", latency_s=1.0, cost=Decimal(0), usage=None)
    assert value(metrics, "farm_provider_latency_seconds_count", model=HAIKU) == 1
    assert value(metrics, "farm_calls_in_flight", model=HAIKU) == 0
