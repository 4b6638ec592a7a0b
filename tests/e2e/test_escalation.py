"""Escalation and the second opinion end to end: real workers on the simple and complex
queues, the simulator's weak haiku ([[sim:weak=…]]) and its second-opinion answers
([[sim:opinion=complex]]), the attempts and costs in Postgres.

Queues here: ``haiku-simple`` (no policy), ``haiku-cascade`` (haiku, escalates to
``sonnet-complex`` by its policy), ``sonnet-complex``; the second-opinion band covers every
score (0,1), so every job the classifier routes asks for one (explicit choices do not)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import text

from farm.broker.layout import INTAKE_QUEUE, RUN_JOB_TASK
from farm.client import Farm, JobView
from farm.costs.pricing import default_pricebook
from farm.jobs import JobStatus, Usage
from farm.routing.json_subset import check
from farm.settings import Settings
from tests_e2e import running_workers

Stats = Callable[[], dict[str, Any]]
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-5-5"
QUEUES = [
    {"name": "haiku-simple", "model": HAIKU, "complexity": "simple"},
    {"name": "haiku-cascade", "model": HAIKU, "complexity": "simple",
     "escalate_to": "sonnet-complex"},
    {"name": "sonnet-complex", "model": SONNET, "complexity": "complex",
     "fallback_model": HAIKU},
]
BAND = "0,1"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"},
                                           "steps": {"type": "array",
                                                     "items": {"type": "string"}}},
          "required": ["answer", "steps"], "additionalProperties": False}


@pytest.fixture(scope="module")
def env(e2e_env: dict[str, str]) -> dict[str, str]:
    return {**e2e_env, "FARM_QUEUES": json.dumps(QUEUES), "FARM_ROUTER_SECOND_OPINION": BAND}


@pytest.fixture(scope="module")
def cascade_workers(env: dict[str, str], worker_logs: Path) -> Iterator[list[Path]]:
    specs = [(worker_logs / "escalation-simple.log",
              f"haiku-simple,haiku-cascade,{INTAKE_QUEUE}", 20),
             (worker_logs / "escalation-complex.log", "sonnet-complex", 20)]
    with running_workers(env, specs):
        yield [log for log, _, _ in specs]


@pytest.fixture
def farm(env: dict[str, str]) -> Iterator[Farm]:
    settings = Settings(broker_url=env["FARM_BROKER_URL"], database_url=env["FARM_DATABASE_URL"],
                        data_dir=Path(env["FARM_DATA_DIR"]), queues=QUEUES,
                        router_second_opinion=(0.0, 1.0))
    with Farm(settings) as f:
        yield f


def attempts_of(farm: Farm, job: uuid.UUID) -> list[Any]:
    with farm.engine.connect() as conn:
        return list(conn.execute(text(
            "select attempt, queue, model, outcome, error, input_tokens, output_tokens, "
            "cost_usd from attempts where job_id = :j order by attempt"), {"j": job}))


def row(farm: Farm, job: uuid.UUID) -> Any:
    with farm.engine.connect() as conn:
        return conn.execute(text("select * from jobs where id = :j"), {"j": job}).one()


def accounted(farm: Farm, views: Sequence[JobView], stats: dict[str, Any]) -> None:
    """Every attempt costs what its usage costs at the price book, each job costs the sum
    of its attempts, and the attempts add up to what the simulator served."""
    prices = default_pricebook()
    calls = inputs = outputs = 0
    for view in views:
        shots = attempts_of(farm, view.id)
        for shot in shots:
            usage = Usage(input_tokens=shot.input_tokens, output_tokens=shot.output_tokens)
            assert shot.cost_usd == prices.cost(shot.model, usage) and shot.cost_usd > 0
        assert view.cost_usd == sum((s.cost_usd for s in shots), Decimal(0))
        assert view.input_tokens == sum(s.input_tokens for s in shots)
        assert view.output_tokens == sum(s.output_tokens for s in shots)
        calls += len(shots)
        inputs += view.input_tokens
        outputs += view.output_tokens
    assert (stats["messages_requests"], stats["successful_calls"]) == (calls, calls)
    assert (stats["input_tokens"], stats["output_tokens"]) == (inputs, outputs)


SIGNALS = {
    "refusal": {},
    "max_tokens": {"max_tokens": 200},
    "bad_json": {"json_schema": SCHEMA},
    "self_check_fail": {"self_check": True},
}
KINDS = {"refusal": "refusal", "max_tokens": "max_tokens", "bad_json": "invalid_json",
         "self_check_fail": "self_check"}


def test_each_signal_escalates_a_haiku_job_to_sonnet(cascade_workers: list[Path], farm: Farm,
                                                     sim_stats: Stats) -> None:
    ids = farm.submit_many([
        {"prompt": f"Answer briefly: what is 6 x 7? [[sim:weak={weak}]]", "escalate": True,
         "queue": "haiku-simple", **fields} for weak, fields in SIGNALS.items()])
    views = farm.wait(ids, timeout=90)
    for weak, view in zip(SIGNALS, views, strict=True):
        assert view.status is JobStatus.SUCCEEDED, (weak, view.error)
        assert (view.queue, view.model, view.served_model) == ("sonnet-complex", SONNET, SONNET)
        assert view.escalated_from == HAIKU and view.attempts == 2 and view.error is None
        assert view.route_reason is not None
        assert view.route_reason.endswith(f"; escalated: {KINDS[weak]}")
        first, second = attempts_of(farm, view.id)
        assert (first.attempt, first.queue, first.model, first.outcome) == (
            1, "haiku-simple", HAIKU, "escalated")
        assert first.error.startswith(f"escalated to sonnet-complex: {KINDS[weak]} (")
        assert (second.attempt, second.queue, second.model, second.outcome) == (
            2, "sonnet-complex", SONNET, "ok")
        assert row(farm, view.id).routing_calls == 1
    by_kind = dict(zip(SIGNALS, views, strict=True))
    answer = json.loads(by_kind["bad_json"].response_text or "")
    assert check(answer, SCHEMA) is None  # sonnet's answer validates
    checked = by_kind["self_check_fail"].response_text or ""
    assert checked and "SELF-CHECK" not in checked  # the PASS line is stripped
    accounted(farm, views, sim_stats())


def test_without_opt_in_or_after_opting_out_nothing_escalates(
        cascade_workers: list[Path], farm: Farm, sim_stats: Stats) -> None:
    refused, bad, opted_out = farm.submit_many([
        {"prompt": "Answer briefly. [[sim:weak=refusal]]", "queue": "haiku-simple"},
        {"prompt": "Answer briefly. [[sim:weak=bad_json]]", "queue": "haiku-simple",
         "response_format": "json"},
        {"prompt": "Answer briefly. [[sim:weak=refusal]]", "queue": "haiku-cascade",
         "escalate": False},
    ])
    views = farm.wait([refused, bad, opted_out], timeout=60)
    # a refusal fails as it always did; a bad answer is still the answer
    assert [v.status for v in views] == [JobStatus.FAILED, JobStatus.SUCCEEDED,
                                         JobStatus.FAILED]
    for view in views:
        assert view.served_model == HAIKU and view.escalated_from is None
        assert view.queue in ("haiku-simple", "haiku-cascade") and view.attempts == 1
        assert "escalated" not in (view.route_reason or "")
        assert [s.outcome for s in attempts_of(farm, view.id)] == (
            ["ok"] if view.id == bad else ["refusal"])
    with pytest.raises(ValueError):
        json.loads(views[1].response_text or "")
    accounted(farm, views, sim_stats())


def test_a_queue_policy_escalates_its_jobs(cascade_workers: list[Path], farm: Farm,
                                           sim_stats: Stats) -> None:
    job = farm.submit(prompt="Answer briefly. [[sim:weak=self_check_fail]]",
                      queue="haiku-cascade", self_check=True)
    view = farm.wait([job], timeout=60)[0]
    assert view.status is JobStatus.SUCCEEDED
    assert (view.queue, view.served_model, view.escalated_from) == ("sonnet-complex", SONNET,
                                                                    HAIKU)
    assert [(s.queue, s.outcome) for s in attempts_of(farm, job)] == [
        ("haiku-cascade", "escalated"), ("sonnet-complex", "ok")]
    accounted(farm, [view], sim_stats())


def test_the_cost_cap_stops_an_escalation_that_would_cross_it(
        cascade_workers: list[Path], farm: Farm, sim_stats: Stats) -> None:
    # haiku's worst case (1,000 output tokens at $5/M) fits $0.009; sonnet's ($10/M) does not
    job = farm.submit(prompt="Answer briefly. [[sim:weak=self_check_fail]]",
                      queue="haiku-simple", escalate=True, self_check=True, max_tokens=1000,
                      max_cost_usd="0.009")
    view = farm.wait([job], timeout=60)[0]
    assert view.status is JobStatus.SUCCEEDED and view.error is None
    assert (view.queue, view.served_model, view.escalated_from) == ("haiku-simple", HAIKU,
                                                                    None)
    assert "; not escalated (self_check) to sonnet-complex: worst case" in (
        view.route_reason or "")
    assert "exceeds the job's cost cap $0.009" in (view.route_reason or "")
    assert view.response_text and "SELF-CHECK" not in view.response_text
    assert [s.outcome for s in attempts_of(farm, job)] == ["ok"]
    accounted(farm, [view], sim_stats())


def test_a_second_opinion_moves_a_job_to_sonnet_or_keeps_it_on_haiku(
        cascade_workers: list[Path], farm: Farm, sim_stats: Stats, env: dict[str, str]) -> None:
    moved, kept, escalated = farm.submit_many([
        {"prompt": "Is this proof sound? [[sim:opinion=complex]]"},
        {"prompt": "Translate 'good morning' into Spanish."},
        {"prompt": "Answer briefly. [[sim:weak=refusal]]", "escalate": True},
    ])
    for job in (moved, kept, escalated):
        assert row(farm, job).second_opinion is True  # the band holds every score
    # a plain send_task job is routed with the band at the intake too
    sender = Celery("svc", broker=env["FARM_BROKER_URL"], set_as_current=False)
    try:
        inline = uuid.UUID(sender.send_task(
            RUN_JOB_TASK, queue=INTAKE_QUEUE, kwargsrepr="<farm job>",
            kwargs={"request": {"prompt": "Why? [[sim:opinion=complex]]"}}).id)
    finally:
        sender.close()
    views = farm.wait([moved, kept, escalated, inline], timeout=90)
    assert [v.status for v in views] == [JobStatus.SUCCEEDED] * 4
    for view in views:
        assert not view.second_opinion and view.route_score is not None
    went, stayed, cascaded, sent_inline = views
    for view in (went, sent_inline):
        assert (view.queue, view.model, view.served_model, view.complexity) == (
            "sonnet-complex", SONNET, SONNET, "simple")  # what the router said stays
        assert view.route_reason is not None
        assert view.route_reason.endswith("; second opinion: complex")
        assert [(s.model, s.outcome) for s in attempts_of(farm, view.id)] == [
            (HAIKU, "second_opinion"), (SONNET, "ok")]
    assert (stayed.queue, stayed.served_model) == ("haiku-simple", HAIKU)
    assert (stayed.route_reason or "").endswith("; second opinion: simple")
    assert [(s.model, s.outcome) for s in attempts_of(farm, kept)] == [
        (HAIKU, "second_opinion"), (HAIKU, "ok")]
    # kept on haiku by the second opinion, then escalated by its answer
    assert (cascaded.served_model, cascaded.escalated_from) == (SONNET, HAIKU)
    assert (cascaded.route_reason or "").endswith(
        "; second opinion: simple; escalated: refusal")
    assert [(s.model, s.outcome) for s in attempts_of(farm, escalated)] == [
        (HAIKU, "second_opinion"), (HAIKU, "escalated"), (SONNET, "ok")]
    assert row(farm, escalated).routing_calls == 2
    for view in views:  # the rubric call is on the job's bill
        assert attempts_of(farm, view.id)[0].cost_usd > 0
    accounted(farm, views, sim_stats())
