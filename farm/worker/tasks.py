"""Celery tasks. Thin: load the job, admit it, call the provider, persist the outcome.

Every decision (routing, retrying, pricing, how a delivery ends for Flower) is a pure
function from another module. The tasks are registered on the worker's app by ``register``
(farm.worker.wiring), with the way to the process's runtime handed in: nothing is read back
out of Celery's configuration.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore

from farm.broker.layout import DEAD_LETTER_TASK, RUN_JOB_TASK
from farm.capacity.admission import Later, Stop
from farm.costs.prompt_cache import cache_ttl
from farm.jobs import JobStatus
from farm.memo import run as memo_run
from farm.provider import messages as llm
from farm.provider.errors import ErrorKind, ProviderError
from farm.reliability import dlq, policies
from farm.reliability.policies import Action
from farm.store import attempts
from farm.store import jobs as store
from farm.worker import events, outcome, reroute
from farm.worker import runtime as rt
from farm.worker.endings import dead as _dead
from farm.worker.endings import finished as _finished
from farm.worker.intake import duplicate, intake
from farm.worker.outcome import Ending, JobFailed
from farm.worker.request import RedactedRequest

log = logging.getLogger("farm.tasks")


def _parse_job_id(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def register(app: Celery, runtime: Callable[[], rt.Runtime]) -> None:
    """Install the farm's tasks on ``app``; ``runtime()`` gives the process's runtime."""

    # max_retries=None: Celery never gives up on its own; the retry policy decides (a `None`
    # passed to self.retry() would mean "the task's default", which is 3). throws: a job that
    # ended failed or dead raises JobFailed, an expected failure (farm.worker.outcome).
    # shared=False: the tasks belong to this app only, not to every Celery app made after it
    @app.task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
              max_retries=None, Request=RedactedRequest, throws=(JobFailed,), shared=False)
    def run_job(self: Task, job_id: str | None = None,
                request: dict[str, Any] | None = None, queue: str | None = None,
                **unexpected: Any) -> dict[str, Any]:
        return execute(self, runtime(), job_id, request, unexpected)

    @app.task(name=DEAD_LETTER_TASK, bind=True, acks_late=True, shared=False)
    def dead_letter(self: Task, job_id: str, error_class: str) -> None:
        """Consumed only if an operator runs a worker on the dead-letter queue: the DLQ row
        is already written; this logs each dead job once more for whoever drains it."""
        log.warning("dead letter: job %s (%s); see `farm dlq show %s`", job_id, error_class,
                    job_id)


def execute(task: Task, runtime: rt.Runtime, job_id: str | None,
            request: dict[str, Any] | None, unexpected: dict[str, Any]) -> dict[str, Any]:
    """One delivery of a job's message: intake (inline jobs), hold, start, run. It ends as
    farm.worker.outcome says from the job's status: a result, JobFailed, or Ignore."""
    job_uuid = _parse_job_id(job_id if job_id is not None else task.request.id)
    if job_uuid is None:
        log.error("dropped malformed message %s: job_id %r is not a UUID", task.request.id,
                  job_id)
        raise JobFailed(str(task.request.id), outcome.DROPPED, outcome.MALFORMED)
    if request is not None or unexpected:
        taken = intake(task, runtime, job_uuid, request, unexpected, task.request.delivery_info)
        if taken is None:
            raise JobFailed(str(job_uuid), JobStatus.FAILED, "invalid")
        if taken != job_uuid:  # its idempotency key is another job's: that one runs
            return duplicate(runtime, job_uuid, taken)
    settings = runtime.settings
    held = runtime.hold.held()
    if held is not None:
        # the farm is on hold (spend limit): keep the job queued, use no attempt, call nothing
        store.defer(runtime.db, job_uuid, settings.hold_recheck_s,
                    f"{store.HELD}{held.get('reason')}")
        log.info("job %s held: %s", job_uuid, held.get("reason"))
        events.job_deferred.send(None, reason=events.HELD, queue=(
            task.request.delivery_info or {}).get("routing_key") or "")
        raise _again(task, job_uuid, settings.hold_recheck_s)
    patience = settings.db_patience_s
    job = store.start_job(runtime.db, job_uuid, lease_s=settings.lease_s,
                          patience_s=patience)
    if job is None:
        return _not_runnable(task, runtime, job_uuid)
    if job.deliveries > settings.max_deliveries:
        reason = f"started {job.deliveries} times without finishing (poison message?)"
        store.kill_job(runtime.db, job.id, reason)
        _dead(task, runtime, job.id, job.queue, "poison", reason)
        _finished(job, job.model, JobStatus.DEAD.value)
        raise JobFailed(str(job.id), JobStatus.DEAD, "poison")
    runtime.running.add(job.id, job.attempt, job.queue)
    try:
        return _run(task, runtime, job)
    finally:
        runtime.running.discard(job.id)


def _run(task: Task, runtime: rt.Runtime, job: store.StartedJob) -> dict[str, Any]:
    opinion = reroute.asks_opinion(job)  # the rubric call first (farm.worker.reroute)
    sent = reroute.call_job(job, opinion)
    # memoization (farm.memo), never of the rubric call: a hit or a wait needs no capacity
    memo = None if opinion else memo_run.check(runtime, sent)
    if isinstance(memo, (memo_run.Hit, memo_run.Wait)):
        return _memo_ended(task, runtime, job, memo)
    try:
        return _admitted(task, runtime, job, opinion, sent, memo)
    finally:
        memo_run.release(runtime, memo)  # the in-flight mark, once the answer is recorded


def _admitted(task: Task, runtime: rt.Runtime, job: store.StartedJob, opinion: bool,
              sent: store.StartedJob, memo: memo_run.Memo | None) -> dict[str, Any]:
    patience = runtime.settings.db_patience_s
    admitted = runtime.gate.admit(sent)
    if isinstance(admitted, Later):
        # waiting for capacity, a healthy model or a resumed queue uses no attempt
        store.unstart(runtime.db, job, admitted.wait_s, admitted.reason,
                      patience_s=patience)
        log.info("job %s deferred %.1fs: %s", job.id, admitted.wait_s, admitted.reason)
        events.job_deferred.send(None, queue=job.queue,
                                 reason=events.deferral_reason(admitted.reason))
        raise _again(task, job.id, admitted.wait_s)
    if isinstance(admitted, Stop):
        return _stopped(task, runtime, job, admitted)
    started = store.now()
    result, cost = _call(runtime, admitted.model, sent)
    if isinstance(result, ProviderError):
        runtime.gate.failed(admitted, result.kind, retry_after_s=result.retry_after_s,
                            ratelimit=result.ratelimit, cost=cost)
        return _failed(task, runtime, job, result, started, admitted.model, cost)
    runtime.gate.done(admitted, result.usage, result.ratelimit, cost)
    step = (reroute.opinion_given if opinion else reroute.answered)(
        runtime, job, result, cost, started)
    recorded = attempts.record(runtime.db, job, step.outcome, patience_s=patience)
    if recorded is not None and not recorded.current:
        return _superseded(task, runtime, job, recorded)
    memo_run.remember(runtime, memo, sent, model=admitted.model, result=result,
                      status=step.outcome.status)
    if step.goes_on(recorded):
        if step.republish is not None:  # recorded first, published after
            raise _again(task, job.id, 0, queue=step.republish)
        again = reroute.restart(runtime, job)
        return _run(task, runtime, again) if again else _not_runnable(task, runtime, job.id)
    refused = step.outcome.outcome == "refusal"
    if refused:
        _dead(task, runtime, job.id, job.queue, "refusal", "the model refused")
    # None: this attempt was recorded already (a write retried after an outage)
    status = step.outcome.status.value if recorded is None else recorded.status.value
    _finished(job, admitted.model, status)
    return _end(task, runtime, job.id, status, "refusal" if refused else None, {
        "job_id": str(job.id), "status": status,
        "cost_usd": None if cost is None else str(cost)})


def _memo_ended(task: Task, runtime: rt.Runtime, job: store.StartedJob,
                memo: memo_run.Hit | memo_run.Wait) -> dict[str, Any]:
    """A memoizing job that makes no call: answered from an identical job's answer (a hit,
    cost 0, what it saved in its result), or handed back to wait for one in flight."""
    if isinstance(memo, memo_run.Wait):  # no attempt used, like any deferral
        events.job_deferred.send(None, queue=job.queue, reason=events.MEMO)
        raise _again(task, job.id, memo.countdown)
    if not memo.recorded:  # cancelled meanwhile
        return _not_runnable(task, runtime, job.id)
    events.memo_hit.send(None, queue=job.queue, model=job.model, saved=memo.original.cost_usd)
    _finished(job, job.model, JobStatus.SUCCEEDED.value)
    return _end(task, runtime, job.id, JobStatus.SUCCEEDED.value, None, memo.result(job.id))


def _stopped(task: Task, runtime: rt.Runtime, job: store.StartedJob,
             stop: Stop) -> dict[str, Any]:
    """A job that must make no call (its cost cap, a spent budget that fails its jobs):
    dead, with the reason, into the dead-letter queue; `farm dlq replay` runs it again."""
    store.kill_job(runtime.db, job.id, stop.reason, uncount=True)
    log.warning("job %s stopped: %s", job.id, stop.reason)
    _dead(task, runtime, job.id, job.queue, stop.error_class, stop.reason)
    _finished(job, job.model, JobStatus.DEAD.value)
    raise JobFailed(str(job.id), JobStatus.DEAD, stop.error_class)


_RAISED = ProviderError(ErrorKind.UNKNOWN, "the call raised")  # for call_finished only


def _call(runtime: rt.Runtime, model: str, job: store.StartedJob
          ) -> tuple[llm.CallResult | ProviderError, Decimal | None]:
    """The call's result and its cost (None: unknown). The result is the provider's answer
    or its error, returned (not raised): whatever the task raises next (a retry, JobFailed)
    then carries no chained provider message into Celery's events and Flower, only its own.
    A failed call costs nothing, but an abandoned call that went out may have been billed:
    its cost is not known."""
    events.call_started.send(None, model=model)
    result: llm.CallResult | ProviderError = _RAISED
    cost: Decimal | None = None
    try:
        result, cost = _provider_call(runtime, model, job)
        return result, cost
    finally:
        if isinstance(result, llm.CallResult):
            ended, usage = ("refusal" if result.stop_reason == "refusal" else "ok"), result.usage
        else:
            ended, usage = result.kind.value, None
        events.call_finished.send(None, model=model, queue=job.queue, tenant=job.request.tenant,
                                  outcome=ended, latency_s=result.latency_s, usage=usage,
                                  cost=cost)


def _provider_call(runtime: rt.Runtime, model: str, job: store.StartedJob
                   ) -> tuple[llm.CallResult | ProviderError, Decimal | None]:
    try:
        result = llm.call(runtime.sdk(), model, job.request,
                          cache_ttl(job.request, job.queue, runtime.settings))
    except ProviderError as exc:
        if not runtime.running.abandoned(job.id):
            return exc, Decimal(0)  # a failed call costs nothing
        # the lease watchdog stopped it: if it went out, the provider may still bill it
        went_out = runtime.running.sent(job.id)
        return ProviderError(
            ErrorKind.ABANDONED, "call abandoned: the job's lease could not be renewed"
            + (" (the provider may still bill it)" if went_out else " before it was sent"),
            latency_s=exc.latency_s), None if went_out else Decimal(0)
    return result, runtime.prices.cost(result.model, result.usage)


def _end(task: Task, runtime: rt.Runtime, job_id: uuid.UUID, status: str | None,
         error_class: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """End the delivery as farm.worker.outcome says for the job's status afterwards: return
    ``result`` (SUCCESS), raise JobFailed (FAILURE), or report REVOKED / nothing (Ignore;
    the message is acknowledged either way). A failure's error class is ``error_class``, or
    else the one the job was dead-lettered with (another delivery ended it)."""
    end = outcome.ending(status)
    if end is Ending.SUCCESS:
        return result
    if end is Ending.FAILURE:
        if status is None:
            raise JobFailed(str(job_id), outcome.DROPPED, outcome.UNKNOWN_JOB)
        raise JobFailed(str(job_id), status,
                        error_class or dlq.error_class(runtime.db, job_id) or status)
    if end is Ending.REVOKED:
        task.send_event("task-revoked", terminated=False, signum=None, expired=False)
    raise Ignore()


def _superseded(task: Task, runtime: rt.Runtime, job: store.StartedJob,
                recorded: attempts.Recorded) -> dict[str, Any]:
    """A late result (the job was started again meanwhile: this worker had lost its lease):
    recorded with its cost, moving nothing; the delivery reports the job as it stands."""
    log.warning("job %s: late result of attempt %d superseded (the job is %s): recorded "
                "with its cost, not as the job's result", job.id, job.attempt,
                recorded.status.value)
    events.late_result.send(None, queue=job.queue)
    return _end(task, runtime, job.id, recorded.status.value, None,
                {"job_id": str(job.id), "status": recorded.status.value})


def _not_runnable(task: Task, runtime: rt.Runtime, job_id: uuid.UUID) -> dict[str, Any]:
    """A delivery of a job that must not run (finished, cancelled, running under another
    worker's live lease, or unknown): acknowledged unrun; it reports the job as it stands, so
    a repeated delivery of a succeeded job is no failure and one of a dead job no success."""
    row = store.get_jobs(runtime.db, [job_id], columns=("id", "status")).get(job_id)
    status = None if row is None else str(row["status"])
    log.info("job %s is not runnable (%s): acknowledged", job_id, status or "no such job")
    return _end(task, runtime, job_id, status, None,
                {"job_id": str(job_id), "status": status, "repeated_delivery": True})


def _again(task: Task, job_id: uuid.UUID, countdown: float,
           queue: str | None = None) -> Exception:
    """The job's message again, later (on ``queue``: the one it moved to). It carries the
    job id only: an inline job's request is recorded by then, so a later delivery does not
    validate and route it again."""
    exc: Exception = task.retry(countdown=countdown, kwargs={"job_id": str(job_id)},
                                queue=queue)
    return exc


def _failed(
    task: Task, runtime: rt.Runtime, job: store.StartedJob, exc: ProviderError, started: Any,
    model: str, cost: Decimal | None,
) -> dict[str, Any]:
    policy = runtime.policy(job.queue)
    decision = policies.decide_retry(  # the attempts spent routing the job do not count
        policy, exc.kind, job.deliveries, retry_after_s=exc.retry_after_s, rand=random.random()
    )
    next_status = {
        Action.RETRY: JobStatus.QUEUED, Action.DEAD: JobStatus.DEAD,
    }.get(decision.action, JobStatus.FAILED)
    recorded = attempts.record(runtime.db, job, attempts.Outcome(
        status=next_status, model=model, outcome=exc.kind.value, started_at=started,
        latency_s=exc.latency_s, http_status=exc.status, request_id=exc.request_id,
        error=exc.message if decision.action is Action.RETRY
        else f"{decision.reason}: {exc.message}",
        retry_in_s=decision.delay_s if decision.action is Action.RETRY else None, cost=cost,
    ), patience_s=runtime.settings.db_patience_s)
    if recorded is not None and not recorded.current:
        return _superseded(task, runtime, job, recorded)  # no retry, no dead letter
    if decision.action is not Action.RETRY:
        _dead(task, runtime, job.id, job.queue, exc.kind.value, exc.message)
    if decision.action is Action.HALT:
        runtime.hold.set(f"{decision.reason} (job {job.id}): raise the limit, then "
                         "`farm hold --release`")
        log.critical("ALERT: %s (job %s); every job is held until the limit is raised and "
                     "`farm hold --release` is run", decision.reason, job.id)
    if decision.action is Action.RETRY:
        events.job_retried.send(None, queue=job.queue, reason=exc.kind.value)
        raise _again(task, job.id, decision.delay_s)
    status = next_status.value if recorded is None else recorded.status.value
    _finished(job, model, status)
    return _end(task, runtime, job.id, status, exc.kind.value,
                {"job_id": str(job.id), "status": status, "error": exc.kind.value})
