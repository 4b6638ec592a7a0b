"""Routing at the worker, after a call: a second opinion asked before the job's own call,
and escalation of a simple model's answer that shows it was out of its depth. The
decisions are pure (farm.routing.second_opinion, farm.routing.escalation); this module
turns a call's result into the attempt to record (``Step``), and the task
(farm.worker.tasks) records it, then publishes or goes on.

Order, so that nothing is lost if the worker dies in between: the attempt row and the
job's move (queue, model, route_reason, ``escalated_from``, ``second_opinion`` cleared) are
one statement (farm.store.attempts.record, fenced like every result; ``jobs.complexity``
stays what the router said at submit); the job is then
queued and due at once, so should the new message never be published, the orphan sweep
(farm.reliability.orphans) publishes it again to the job's new queue, and a second copy of
the old message finds the job queued on its new model and runs it there. Each routing call
counts in ``jobs.routing_calls``, which the retry policy and the poison count leave out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from farm.costs.admit import job_cap
from farm.costs.estimate import CapCheck, worst_case
from farm.costs.prompt_cache import cache_ttl
from farm.jobs import JobStatus
from farm.provider.messages import CallResult
from farm.routing import escalation, second_opinion
from farm.settings import QueueSpec
from farm.store import attempts
from farm.store import jobs as store
from farm.store.attempts import Move, Outcome
from farm.worker import runtime as rt

log = logging.getLogger("farm.tasks")

ESCALATED = "escalated"  # the attempt outcome of an answer moved to the complex model
SECOND_OPINION = "second_opinion"  # the attempt outcome of the rubric call


@dataclass(frozen=True)
class Step:
    """The attempt to record for a call that the provider answered, and what follows."""

    outcome: Outcome
    republish: str | None = None  # the queue the job moved to: its message goes there
    restart: bool = False  # start the job again in this delivery (kept on its model)

    def goes_on(self, recorded: attempts.Recorded | None) -> bool:
        """Whether the job moves on from this step (it was recorded queued, or had been)."""
        moving = self.republish is not None or self.restart
        return moving and (recorded is None or recorded.status is JobStatus.QUEUED)


def asks_opinion(job: store.StartedJob) -> bool:
    """Whether this start of the job makes the rubric call first."""
    return job.second_opinion


def call_job(job: store.StartedJob, opinion: bool) -> store.StartedJob:
    """The job as the call sees it (admission, worst case, the provider): the rubric
    request, or the job's request with the farm's instructions (JSON, self-check)."""
    request = (second_opinion.opinion_request(job.request) if opinion
               else escalation.as_sent(job.request))
    return job if request is job.request else replace(job, request=request)


def _call_outcome(result: CallResult, cost: Decimal | None, started: datetime,
                  status: JobStatus, outcome: str) -> Outcome:
    return Outcome(status=status, model=result.model, outcome=outcome, started_at=started,
                   latency_s=result.latency_s, usage=result.usage, cost=cost, http_status=200,
                   request_id=result.request_id)


def opinion_given(runtime: rt.Runtime, job: store.StartedJob, result: CallResult,
                  cost: Decimal | None, started: datetime) -> Step:
    """The rubric call's attempt: the job moves to the complex queue ("complex"), or is
    started again on its own model in this delivery; the second opinion is cleared."""
    said = second_opinion.parse_opinion(result.text)
    decided = second_opinion.decide(said, runtime.settings.queues)
    target = decided.target
    note = decided.note.removeprefix("; ")
    log.info("job %s: %s", job.id, note)
    return Step(replace(
        _call_outcome(result, cost, started, JobStatus.QUEUED, SECOND_OPINION), error=note,
        retry_in_s=0.0, wait_reason=note if target is None else f"{note}: moved to "
        f"{target.name}", move=Move(
            queue=None if target is None else target.name,
            model=None if target is None else target.model, note=decided.note,
            routing_call=True, clear_second_opinion=True)),
        republish=None if target is None else target.name, restart=target is None)


def _cap_check(runtime: rt.Runtime, job: store.StartedJob, target: QueueSpec,
               cost: Decimal | None) -> CapCheck | None:
    """The complex call's worst case on top of what the job has spent (this call
    included), against the cap it will run under there; None: its model has no price."""
    price = runtime.prices.price(target.model)
    if price is None:
        return None
    worst = worst_case(price, escalation.as_sent(job.request),
                       cache_ttl(job.request, target.name, runtime.settings))
    return CapCheck(job_cap(job.request, target.name, runtime.settings),
                    job.spent + (cost or Decimal(0)), worst)


def answered(runtime: rt.Runtime, job: store.StartedJob, result: CallResult,
             cost: Decimal | None, started: datetime) -> Step:
    """The job's own call answered: escalate it (the answer is an attempt "escalated" and
    the job moves to the complex queue), or record the answer as its result: succeeded,
    or failed on a refusal, the self-check line stripped."""
    settings = runtime.settings
    answer = escalation.judge(job.request, result.stop_reason, result.text,
                              short_budget=settings.escalate_short_budget)
    target = None if answer.signal is None else escalation.escalation_target(
        job.request, job.queue, settings.queues)
    decision = escalation.should_escalate(
        answer.signal, target, escalated_from=job.escalated_from,
        cap=None if target is None else _cap_check(runtime, job, target, cost))
    if decision.action is escalation.Action.ESCALATE:
        assert decision.target is not None and answer.signal is not None
        moved_to = decision.target
        log.info("job %s escalated from %s to %s: %s", job.id, job.model, moved_to.name,
                 answer.signal.kind.value)
        return Step(replace(
            _call_outcome(result, cost, started, JobStatus.QUEUED, ESCALATED),
            error=f"escalated to {moved_to.name}: {answer.signal}", retry_in_s=0.0,
            wait_reason=f"escalated to {moved_to.name} ({answer.signal.kind.value})",
            move=Move(queue=moved_to.name, model=moved_to.model, note=decision.note,
                      escalated_from=job.model, routing_call=True)),
            republish=moved_to.name)
    if decision.action is escalation.Action.CAPPED:
        log.info("job %s not escalated: %s", job.id, decision.note.removeprefix("; "))
    refused = result.stop_reason == "refusal"
    return Step(replace(
        _call_outcome(result, cost, started, JobStatus.FAILED if refused
                      else JobStatus.SUCCEEDED, "refusal" if refused else "ok"),
        response_text=answer.text,
        stop_reason=result.stop_reason, error="the model refused" if refused else None,
        move=Move(note=decision.note)))


def restart(runtime: rt.Runtime, job: store.StartedJob) -> store.StartedJob | None:
    """Start the job again in this delivery (its next attempt, a fresh lease), held by this
    process under its new generation; None if it must not run (cancelled meanwhile)."""
    settings = runtime.settings
    again = store.start_job(runtime.db, job.id, lease_s=settings.lease_s,
                            patience_s=settings.db_patience_s)
    if again is not None:
        runtime.running.add(again.id, again.attempt, again.queue)
    return again
