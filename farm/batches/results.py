"""A batch's results, streamed with the SDK (``client.messages.batches.results``) and
recorded exactly once each: the attempt's primary key (job_id, attempt) lets one insert
through (farm.store.attempts.record), so a result streamed again (a second poller, a
restarted worker) changes nothing and tells nobody twice.

A result is recorded as a synchronous call's answer or error would be, at the batch price
(farm.costs.pricing ``cost(..., batch=True)``): an answer goes through the same routing
steps (farm.worker.reroute: a second opinion, escalation; a job that moves on waits for a
later batch on its new model; a memoizing job's answer that may serve gets its memo key,
farm.batches.memo); an errored, expired or canceled request follows the queue's
retry policy (farm.batches.policy.on_failure): retried into a later batch, or dead into the
dead-letter queue. A job cancelled while its batch was in flight stays cancelled; what its
request cost is recorded with the attempt. Each recorded result sends ``call_finished``
(``batch=True``) and, when it ends its job, ``job_finished``, so metrics and the spend
ledger see batch spend as they see synchronous spend.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection

from farm.batches import memo, policy, rows
from farm.batches.context import Batching
from farm.batches.policy import ResultType
from farm.jobs import JobStatus
from farm.provider.errors import ErrorKind
from farm.provider.messages import CallResult, parse_message
from farm.reliability.policies import Action
from farm.store import attempts
from farm.store.attempts import Outcome
from farm.worker import events, reroute

log = logging.getLogger("farm.batches")
CHUNK = 200  # results recorded per read of their jobs


def record_all(b: Batching, conn: Connection[Any], batch: rows.BatchRow,
               lease_s: float = 600.0) -> int:
    """Stream the ended batch's results and record each; then any request the results
    left out fails as an unknown error. Returns how many results were new."""
    assert batch.provider_id is not None
    new = 0
    chunk: list[Any] = []
    for entry in b.client.messages.batches.results(batch.provider_id):
        chunk.append(entry)
        if len(chunk) >= CHUNK:
            new += record_chunk(b, conn, batch, chunk)
            rows.touch(conn, batch.id, lease_s)  # still at it: the batch stays ours
            chunk = []
    new += record_chunk(b, conn, batch, chunk)
    missing = rows.unrecorded(conn, batch.id)
    if missing:
        log.error("batch %s: %d request(s) had no result", batch.provider_id, len(missing))
        for item in rows.items(conn, batch.id, missing).values():
            new += failed(b, batch.id, batch, item, ErrorKind.UNKNOWN,
                          f"no result for it in batch {batch.provider_id}'s results")
    return new


def record_chunk(b: Batching, conn: Connection[Any], batch: rows.BatchRow,
                 entries: Sequence[Any]) -> int:
    """Record some results of the batch (SDK ``MessageBatchIndividualResponse``s)."""
    ids: dict[str, uuid.UUID | None] = {e.custom_id: _uuid(e.custom_id) for e in entries}
    found = rows.items(conn, batch.id, [i for i in ids.values() if i is not None])
    new = 0
    for entry in entries:
        job_id = ids[entry.custom_id]
        item = None if job_id is None else found.get(job_id)
        if item is None:
            log.error("batch %s: result for %r, which is none of its requests",
                      batch.provider_id, entry.custom_id[:64])
            continue
        result = entry.result
        kind = ResultType(result.type)
        if kind is ResultType.SUCCEEDED:
            new += succeeded(b, batch, item, result.message.to_json().encode())
            continue
        error_type, message = _error(result) if kind is ResultType.ERRORED else ("", "")
        what = (f"{kind.value}" + (f": {error_type}: {message}" if error_type else "")
                + f" (batch {batch.provider_id})")
        new += failed(b, batch.id, batch, item, policy.error_kind(kind, error_type, message),
                      what[:2000], http_status=policy.ERROR_TYPE_STATUS.get(error_type))
    return new


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _error(result: Any) -> tuple[str, str]:
    """An errored result's API error type and message."""
    outer = getattr(result, "error", None)
    inner = getattr(outer, "error", None)
    return str(getattr(inner, "type", "") or ""), str(getattr(inner, "message", "") or "")[:500]


def _timing(batch: rows.BatchRow | None) -> tuple[datetime, float]:
    now = datetime.now(UTC)
    since = now if batch is None else (batch.submitted_at or batch.created_at)
    return since, max(0.0, (now - since).total_seconds())


def succeeded(b: Batching, batch: rows.BatchRow, item: rows.Item, body: bytes) -> int:
    """Record an answer (1), or nothing when it was recorded already (0)."""
    job, runtime = item.job, b.runtime
    text, stop_reason, usage, served = parse_message(body)
    cost = runtime.prices.cost(served, usage, batch=True)
    since, latency = _timing(batch)
    answer = CallResult(text=text, stop_reason=stop_reason, usage=usage, model=served,
                        request_id=batch.provider_id, latency_s=latency)
    opinion = reroute.asks_opinion(job)
    step = (reroute.opinion_given if opinion else reroute.answered)(
        runtime, job, answer, cost, since)
    recorded = attempts.record(b.db, job, step.outcome, patience_s=b.patience_s)
    if recorded is None:
        return 0
    refused = step.outcome.outcome == "refusal"
    events.call_finished.send(None, model=job.model, queue=job.queue,
                              tenant=job.request.tenant, outcome="refusal" if refused
                              else "ok", latency_s=latency, usage=usage, cost=cost, batch=True)
    b.spend(job.request.tenant, job.queue, job.model, cost)
    if not recorded.current:
        log.warning("job %s: late batch result of attempt %d superseded (the job is %s): "
                    "recorded with its cost", job.id, job.attempt, recorded.status.value)
        events.late_result.send(None, queue=job.queue)
        return 1
    if step.goes_on(recorded):
        log.info("job %s waits for a later batch (%s)", job.id, step.outcome.outcome)
        return 1
    if recorded.status is JobStatus.SUCCEEDED and not opinion:
        memo.remember(b, item, answer)  # an answer that may serve gets its memo key
    if refused and recorded.status is not JobStatus.CANCELLED:
        b.dead_letter(job.id, job.queue, "refusal", "the model refused")
    _finished(job, served, recorded.status)
    return 1


def failed(b: Batching, batch_id: uuid.UUID, batch: rows.BatchRow | None, item: rows.Item,
           kind: ErrorKind, message: str, *, http_status: int | None = None) -> int:
    """Record a request that did not succeed (1), or nothing when recorded already (0)."""
    job, runtime = item.job, b.runtime
    failure = policy.on_failure(kind, runtime.policy(job.queue), job.deliveries,
                                cancelled=item.status == JobStatus.CANCELLED.value,
                                rand=random.random())
    decision = failure.decision
    since, latency = _timing(batch)
    recorded = attempts.record(b.db, job, Outcome(
        status=failure.status, model=job.model, outcome=kind.value, started_at=since,
        latency_s=latency, http_status=http_status, cost=Decimal(0),
        request_id=None if batch is None else batch.provider_id,
        error=message if decision is None or decision.action is Action.RETRY
        else f"{decision.reason}: {message}", retry_in_s=failure.retry_in_s,
        wait_reason=None if failure.retry_in_s is None
        else f"retry in a later Message Batch after {kind.value}"),
        patience_s=b.patience_s)
    if recorded is None:
        return 0
    events.call_finished.send(None, model=job.model, queue=job.queue,
                              tenant=job.request.tenant, outcome=kind.value, latency_s=latency,
                              usage=None, cost=Decimal(0), batch=True)
    if not recorded.current or recorded.status is JobStatus.CANCELLED or decision is None:
        _finished(job, job.model, recorded.status)
        return 1
    if decision.action is Action.RETRY:
        events.job_retried.send(None, queue=job.queue, reason=kind.value)
        return 1
    b.dead_letter(job.id, job.queue, kind.value, message)
    if decision.action is Action.HALT:
        runtime.hold.set(f"{decision.reason} (job {job.id}): raise the limit, then "
                         "`farm hold --release`")
        log.critical("ALERT: %s (job %s, batch %s); every job is held", decision.reason,
                     job.id, batch_id)
    _finished(job, job.model, recorded.status)
    return 1


def _finished(job: Any, model: str, status: JobStatus) -> None:
    if status.terminal:
        created = job.created_at
        events.job_finished.send(
            None, queue=job.queue, model=model, outcome=status.value,
            duration_s=None if created is None
            else (datetime.now(UTC) - created).total_seconds())

