"""The worker's routing steps (farm.worker.reroute): the attempt a provider's answer becomes
(escalated, kept, capped, second opinion) and what follows, without services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest

from farm.costs.pricing import default_pricebook
from farm.jobs import JobRequest, JobStatus, Usage
from farm.provider.messages import CallResult
from farm.reliability.fencing import Verdict
from farm.routing.escalation import PASS_LINE, SELF_CHECK_INSTRUCTION
from farm.routing.second_opinion import RUBRIC
from farm.settings import QueueSpec, Settings
from farm.store import attempts
from farm.store.jobs import StartedJob
from farm.worker import reroute
from farm.worker import runtime as rt

NOW = datetime.now(UTC)
USAGE = Usage(input_tokens=120, output_tokens=30)


def runtime(**settings: Any) -> rt.Runtime:
    fake = SimpleNamespace(settings=Settings(**settings), prices=default_pricebook())
    return cast(rt.Runtime, fake)


def job(queue: str = "haiku-simple", model: str = "claude-haiku-4-5", **fields: Any
        ) -> StartedJob:
    opinion = fields.pop("second_opinion", False)
    escalated = fields.pop("escalated_from", None)
    spent = fields.pop("spent", Decimal(0))
    return StartedJob(uuid.uuid4(), JobRequest(prompt="What is 2 + 2?", **fields), queue, model,
                      1, NOW, spent, second_opinion=opinion, escalated_from=escalated)


def result(text: str = "4", stop: str = "end_turn", model: str = "claude-haiku-4-5"
           ) -> CallResult:
    return CallResult(text=text, stop_reason=stop, usage=USAGE, model=model,
                      request_id="req_1", latency_s=0.25)


COST = Decimal("0.00027")


def test_the_call_sees_the_farms_instructions_or_the_rubric() -> None:
    plain = job()
    assert reroute.call_job(plain, False) is plain
    checked = reroute.call_job(job(self_check=True), False)
    assert checked.request.system == SELF_CHECK_INSTRUCTION
    asked = reroute.call_job(job(second_opinion=True), True)
    assert asked.request.system == RUBRIC and asked.request.max_tokens == 32
    assert reroute.asks_opinion(job(second_opinion=True))
    assert not reroute.asks_opinion(job())


def test_a_fine_answer_is_the_result() -> None:
    step = reroute.answered(runtime(), job(escalate=True, self_check=True),
                            result(f"4\n{PASS_LINE}"), COST, NOW)
    out = step.outcome
    assert (out.status, out.outcome, out.response_text, out.error) == (
        JobStatus.SUCCEEDED, "ok", "4", None)
    assert (out.cost, out.usage, out.http_status, out.move) == (COST, USAGE, 200,
                                                                attempts.Move())
    assert step.republish is None and not step.restart


def test_an_out_of_depth_answer_escalates_when_asked() -> None:
    started = job(escalate=True, max_tokens=100)
    step = reroute.answered(runtime(), started, result("cut", "max_tokens"), COST, NOW)
    out = step.outcome
    assert (out.status, out.outcome, out.retry_in_s) == (JobStatus.QUEUED, "escalated", 0.0)
    assert out.response_text is None and out.cost == COST and out.usage == USAGE
    assert out.error == ("escalated to sonnet-complex: max_tokens (ran out at max_tokens 100 "
                         "<= 1024)")
    assert out.wait_reason == "escalated to sonnet-complex (max_tokens)"
    assert out.move == attempts.Move(queue="sonnet-complex", model="claude-sonnet-5-5",
                                     note="; escalated: max_tokens",
                                     escalated_from="claude-haiku-4-5", routing_call=True)
    assert step.republish == "sonnet-complex" and not step.restart


def test_the_short_budget_comes_from_the_settings() -> None:
    started = job(escalate=True, max_tokens=100)
    step = reroute.answered(runtime(escalate_short_budget=99), started,
                            result("cut", "max_tokens"), COST, NOW)
    assert step.outcome.outcome == "ok" and step.republish is None


@pytest.mark.parametrize("fields", [
    {},  # no opt-in, the default queues have no policy
    {"escalate": False},
    {"escalate": True, "escalated_from": "claude-haiku-4-5"},  # once
])
def test_no_escalation_keeps_the_answer_or_the_refusal(fields: dict[str, Any]) -> None:
    step = reroute.answered(runtime(), job(**fields), result("no", "refusal"), COST, NOW)
    out = step.outcome
    assert (out.status, out.outcome, out.error) == (JobStatus.FAILED, "refusal",
                                                    "the model refused")
    assert out.move == attempts.Move() and step.republish is None


def test_a_complex_queues_refusal_fails_as_before() -> None:
    started = job("sonnet-complex", "claude-sonnet-5-5", escalate=True)
    step = reroute.answered(runtime(), started, result("no", "refusal", "claude-sonnet-5-5"),
                            COST, NOW)
    assert step.outcome.status is JobStatus.FAILED and step.republish is None


def test_a_queue_policy_escalates_to_its_target() -> None:
    queues = (QueueSpec(name="fast", model="claude-haiku-4-5", complexity="simple",
                        escalate_to="deep"),
              QueueSpec(name="other", model="claude-sonnet-5-5", complexity="complex"),
              QueueSpec(name="deep", model="claude-opus-4-5", complexity="complex"))
    step = reroute.answered(runtime(queues=queues), job("fast", response_format="json"),
                            result("not json"), COST, NOW)
    assert step.republish == "deep" and step.outcome.move.model == "claude-opus-4-5"
    assert step.outcome.move.note == "; escalated: invalid_json"


def test_the_cost_cap_keeps_the_simple_answer_and_says_why() -> None:
    # sonnet's worst case of 1,000 output tokens is about $0.01
    capped = job(escalate=True, self_check=True, max_tokens=1000,
                 max_cost_usd=Decimal("0.01"), spent=Decimal("0.001"))
    step = reroute.answered(runtime(), capped, result("4\nSELF-CHECK: FAIL"), COST, NOW)
    out = step.outcome
    assert (out.status, out.outcome, out.response_text) == (JobStatus.SUCCEEDED, "ok", "4")
    assert out.move.note.startswith("; not escalated (self_check) to sonnet-complex: worst "
                                    "case $0.01")
    assert "on top of $0.001270 already spent exceeds the job's cost cap $0.01" in \
        out.move.note
    assert out.move.queue is None and step.republish is None
    roomy = reroute.answered(runtime(), job(escalate=True, self_check=True, max_tokens=1000,
                                            max_cost_usd=Decimal("0.02")),
                             result("4"), COST, NOW)
    assert roomy.republish == "sonnet-complex"


def test_a_queue_cap_of_the_target_counts() -> None:
    queues = (QueueSpec(name="haiku-simple", model="claude-haiku-4-5", complexity="simple"),
              QueueSpec(name="sonnet-complex", model="claude-sonnet-5-5",
                        complexity="complex", max_cost_usd=Decimal("0.001")))
    step = reroute.answered(runtime(queues=queues), job(escalate=True),
                            result("no", "refusal"), COST, NOW)
    assert step.republish is None and "not escalated (refusal)" in step.outcome.move.note
    assert step.outcome.status is JobStatus.FAILED


@pytest.mark.parametrize(("text", "target", "note"), [
    ('{"complexity":"complex"}', "sonnet-complex", "; second opinion: complex"),
    ('{"complexity":"simple"}', None, "; second opinion: simple"),
    ("hmm", None, "; second opinion: unclear, kept simple"),
])
def test_the_second_opinion_moves_or_restarts(text: str, target: str | None,
                                              note: str) -> None:
    step = reroute.opinion_given(runtime(), job(second_opinion=True), result(text), COST, NOW)
    out = step.outcome
    assert (out.status, out.outcome, out.cost, out.retry_in_s) == (
        JobStatus.QUEUED, "second_opinion", COST, 0.0)
    assert out.response_text is None and out.error == note.removeprefix("; ")
    assert out.move.clear_second_opinion and out.move.routing_call
    assert out.move.note == note and out.move.queue == target
    assert step.republish == target and step.restart is (target is None)


def test_a_step_goes_on_only_from_a_queued_job() -> None:
    moving = reroute.Step(reroute.answered(runtime(), job(), result(), COST, NOW).outcome,
                          republish="sonnet-complex")
    assert moving.goes_on(None)
    assert moving.goes_on(attempts.Recorded(JobStatus.QUEUED, Verdict.CURRENT))
    assert not moving.goes_on(attempts.Recorded(JobStatus.CANCELLED, Verdict.CURRENT))
    still = reroute.Step(moving.outcome)
    assert not still.goes_on(attempts.Recorded(JobStatus.QUEUED, Verdict.CURRENT))
