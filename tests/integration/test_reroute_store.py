"""Routing at the worker, in real Postgres: the route's score and second-opinion flag on the
job row, and a routing call's attempt moving its job in the same fenced statement
(farm.store.attempts.Move): queue, model, route_reason, escalated_from, the flag cleared,
routing_calls; a late one moves nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from farm.client import Farm
from farm.jobs import JobStatus, Usage
from farm.reliability import orphans
from farm.settings import Settings
from farm.store import attempts
from farm.store import jobs as store


@pytest.fixture
def farm(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[Farm]:
    # the band covers every score: each auto-routed job asks for a second opinion
    with Farm(Settings(broker_url=broker_url, database_url=database_url, data_dir=tmp_path,
                       router_second_opinion=(0.0, 1.0))) as f:
        yield f


def row(farm: Farm, job: uuid.UUID) -> Any:
    with farm.engine.connect() as conn:
        return conn.execute(text("select * from jobs where id = :id"), {"id": job}).one()


def answered(status: JobStatus, outcome: str, move: attempts.Move, **fields: Any
             ) -> attempts.Outcome:
    return attempts.Outcome(
        status=status, model="claude-haiku-4-5", outcome=outcome,
        started_at=datetime.now(UTC), latency_s=0.5,
        usage=Usage(input_tokens=100, output_tokens=20), cost=Decimal("0.0002"),
        http_status=200, retry_in_s=0.0, move=move, **fields)


def test_the_route_score_and_second_opinion_are_stored(farm: Farm) -> None:
    unsure, sure = farm.submit_many([{"prompt": "Translate 'hello' into French."},
                                     {"prompt": "Translate 'hi'.", "complexity": "simple"}])
    first = row(farm, unsure)
    assert first.second_opinion is True and first.queue == "haiku-simple"
    assert isinstance(first.route_score, float) and first.routing_calls == 0
    assert "second opinion" in first.route_reason
    assert (row(farm, sure).second_opinion, row(farm, sure).route_score) == (False, None)
    view = farm.status(unsure)
    assert view.second_opinion and view.route_score == first.route_score
    job = store.start_job(farm.db, unsure)
    assert job is not None and job.second_opinion and job.escalated_from is None
    assert (job.attempt, job.routing_calls, job.deliveries) == (1, 0, 1)


def test_an_escalated_attempt_moves_its_job_in_the_same_statement(farm: Farm) -> None:
    job_id = farm.submit(prompt="What is 2 + 2?", complexity="simple")
    job = store.start_job(farm.db, job_id)
    assert job is not None and not job.second_opinion
    move = attempts.Move(queue="sonnet-complex", model="claude-sonnet-5-5",
                         note="; escalated: refusal", escalated_from="claude-haiku-4-5",
                         routing_call=True)
    got = attempts.record(farm.db, job, answered(
        JobStatus.QUEUED, "escalated", move, error="escalated to sonnet-complex: refusal",
        wait_reason="escalated to sonnet-complex (refusal)"))
    assert got is not None and got.current and got.status is JobStatus.QUEUED
    moved = row(farm, job_id)
    assert (moved.status, moved.queue, moved.model) == ("queued", "sonnet-complex",
                                                        "claude-sonnet-5-5")
    assert moved.complexity == "simple"  # what the router said stays
    assert moved.route_reason.endswith("; escalated: refusal")
    assert moved.escalated_from == "claude-haiku-4-5" and moved.routing_calls == 1
    # nothing is served yet: the answer is not the job's
    assert (moved.served_model, moved.response_text, moved.stop_reason) == (None, None, None)
    assert moved.cost_usd == Decimal("0.0002") and moved.output_tokens == 20
    assert moved.next_run_at is not None and moved.lease_until is None
    assert moved.wait_reason == "escalated to sonnet-complex (refusal)"
    # the next start runs it on the complex model; the routing call is no delivery
    again = store.start_job(farm.db, job_id)
    assert again is not None and (again.queue, again.model) == ("sonnet-complex",
                                                                "claude-sonnet-5-5")
    assert (again.attempt, again.routing_calls, again.deliveries) == (2, 1, 1)
    assert again.escalated_from == "claude-haiku-4-5" and again.spent == Decimal("0.0002")
    with farm.engine.connect() as conn:
        shot = conn.execute(text("select outcome, queue, model, error, cost_usd from attempts "
                                 "where job_id = :id"), {"id": job_id}).one()
    assert tuple(shot) == ("escalated", "haiku-simple", "claude-haiku-4-5",
                           "escalated to sonnet-complex: refusal", Decimal("0.0002"))


def test_a_second_opinion_clears_the_flag_and_may_move_the_job(farm: Farm) -> None:
    kept, moved = farm.submit_many([{"prompt": "Say hi."}, {"prompt": "Say hello."}])
    for job_id, move in ((kept, attempts.Move(note="; second opinion: simple")),
                         (moved, attempts.Move(queue="sonnet-complex",
                                               model="claude-sonnet-5-5",
                                               note="; second opinion: complex"))):
        job = store.start_job(farm.db, job_id)
        assert job is not None and job.second_opinion
        full = replace(move, routing_call=True, clear_second_opinion=True)
        got = attempts.record(farm.db, job, answered(JobStatus.QUEUED, "second_opinion",
                                                         full))
        assert got is not None and got.current
    stayed, went = row(farm, kept), row(farm, moved)
    assert (stayed.second_opinion, stayed.queue, stayed.routing_calls) == (
        False, "haiku-simple", 1)
    assert stayed.route_reason.endswith("; second opinion: simple")
    # what the router said at submit stays (route feedback compares with it)
    assert (went.second_opinion, went.queue, went.model, went.complexity) == (
        False, "sonnet-complex", "claude-sonnet-5-5", "simple")
    assert went.route_reason.endswith("; second opinion: complex")


def test_a_late_routing_attempt_moves_nothing(farm: Farm) -> None:
    job_id = farm.submit(prompt="Say hi.")
    job = store.start_job(farm.db, job_id)
    assert job is not None
    with farm.engine.begin() as conn:  # the job was started again meanwhile
        conn.execute(text("update jobs set attempts = 2 where id = :id"), {"id": job_id})
    move = attempts.Move(queue="sonnet-complex", model="claude-sonnet-5-5", note="; moved",
                         escalated_from="claude-haiku-4-5", routing_call=True,
                         clear_second_opinion=True)
    got = attempts.record(farm.db, job, answered(JobStatus.QUEUED, "escalated", move))
    assert got is not None and not got.current
    after = row(farm, job_id)
    assert (after.queue, after.model, after.escalated_from, after.routing_calls) == (
        "haiku-simple", "claude-haiku-4-5", None, 0)
    assert after.second_opinion is True and not after.route_reason.endswith("; moved")
    assert after.cost_usd == Decimal("0.0002")  # billed all the same


def test_a_capped_escalation_keeps_the_answer_with_a_note(farm: Farm) -> None:
    job_id = farm.submit(prompt="Say hi.", complexity="simple")
    job = store.start_job(farm.db, job_id)
    assert job is not None
    got = attempts.record(farm.db, job, replace(answered(
        JobStatus.SUCCEEDED, "ok", attempts.Move(note="; not escalated (max_tokens): cap"),
        response_text="hi", stop_reason="max_tokens"), retry_in_s=None))
    assert got is not None and got.status is JobStatus.SUCCEEDED
    done = row(farm, job_id)
    assert (done.status, done.served_model, done.response_text, done.error) == (
        "succeeded", "claude-haiku-4-5", "hi", None)
    assert done.route_reason.endswith("; not escalated (max_tokens): cap")
    assert (done.queue, done.escalated_from, done.routing_calls) == ("haiku-simple", None, 0)


def test_an_escalated_job_whose_message_was_never_published_is_swept_to_its_new_queue(
        farm: Farm, broker_url: str) -> None:
    """The worker died between the attempt row and the publish: the job is queued and due
    on the complex queue, its message nowhere; the orphan sweep publishes it there."""
    job_id = farm.submit(prompt="What is 2 + 2?", complexity="simple")
    job = store.start_job(farm.db, job_id)
    assert job is not None
    move = attempts.Move(queue="sonnet-complex", model="claude-sonnet-5-5",
                         note="; escalated: refusal", escalated_from="claude-haiku-4-5",
                         routing_call=True)
    attempts.record(farm.db, job, answered(JobStatus.QUEUED, "escalated", move))
    broker = redis.Redis.from_url(broker_url)
    try:
        broker.flushdb()  # the old message was consumed, the new one never published
        republished: list[tuple[uuid.UUID, str]] = []
        found = orphans.sweep_orphans(farm.db, broker,
                                      lambda j, q, p: republished.append((j, q)),
                                      age_s=60, grace_s=0)
    finally:
        broker.close()
    assert found >= 1 and (job_id, "sonnet-complex") in republished
    again = store.start_job(farm.db, job_id)
    assert again is not None and again.model == "claude-sonnet-5-5"
