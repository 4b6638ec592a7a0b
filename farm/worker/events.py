"""The farm's own worker signals: what a task did, sent once per event, for whoever listens
(``farm.observe.metrics`` counts them). The tasks send; they never know who listens. A
listener that raises is logged by Celery's dispatcher and never fails the task.

Every argument is a bounded value (a queue, a model, an outcome or reason class, numbers)
plus the tenant on ``call_finished``: never a job id, a prompt or a provider message.

- ``call_started(model)``: a provider call goes out (the in-flight gauge goes up);
- ``call_finished(model, queue, tenant, outcome, latency_s, usage, cost)``: it came back
  (or raised): ``outcome`` is "ok", "refusal" or an ``ErrorKind`` value; ``cost`` is USD,
  None when unknown (an abandoned call that went out, a model without a price); with
  ``batch=True`` it is a Message Batch request's result (farm.batches): no ``call_started``
  came before it, and its latency is the batch's, not the model's;
- ``job_finished(queue, model, outcome, duration_s)``: this delivery ended the job
  (succeeded, failed, dead, cancelled); ``duration_s`` from created to now, None if unknown;
- ``job_deferred(queue, reason)``: handed back to wait without a call, ``reason`` one of
  ``DEFERRAL_REASONS``;
- ``job_retried(queue, reason)``: a retry scheduled after a failed call (the error class);
- ``job_dead(queue, error_class)``: dead-lettered (once per job);
- ``late_result(queue)``: a late result recorded as superseded;
- ``memo_hit(queue, model, saved)``: a job answered from an identical earlier job's answer
  (farm.memo), no call made; ``saved`` is that answer's cost (USD, None when unknown).
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

call_started = Signal(name="farm.call_started")
call_finished = Signal(name="farm.call_finished")
job_finished = Signal(name="farm.job_finished")
job_deferred = Signal(name="farm.job_deferred")
job_retried = Signal(name="farm.job_retried")
job_dead = Signal(name="farm.job_dead")
late_result = Signal(name="farm.late_result")
memo_hit = Signal(name="farm.memo_hit")

ALL = (call_started, call_finished, job_finished, job_deferred, job_retried, job_dead,
       late_result, memo_hit)

CAPACITY, CIRCUIT, PAUSED, HELD = "capacity", "circuit", "paused", "held"
BUDGET, COST_BREAKER = "budget", "cost_breaker"
MEMO = "memo"  # waiting for an identical job in flight (farm.memo)
DEFERRAL_REASONS = (CAPACITY, CIRCUIT, PAUSED, HELD, BUDGET, COST_BREAKER, MEMO)


def deferral_reason(wait_reason: str) -> str:
    """The class of a deferral from the job's wait_reason (farm.store.jobs): an open circuit
    ("circuit of M is open"), a paused queue ("queue Q is paused"), or capacity (a limit of
    the model, "M: rpm"), a budget ("budget B: …") or the cost breaker ("cost breaker S
    open"). The hold is sent as ``HELD`` by its own path."""
    if wait_reason.startswith("circuit of "):
        return CIRCUIT
    if wait_reason.startswith("queue ") and wait_reason.endswith(" is paused"):
        return PAUSED
    if wait_reason.startswith("held: "):
        return HELD
    if wait_reason.startswith("budget "):
        return BUDGET
    if wait_reason.startswith("cost breaker "):
        return COST_BREAKER
    if wait_reason.startswith("memo: "):
        return MEMO
    return CAPACITY
