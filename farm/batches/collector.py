"""A flush: a model's waiting jobs go to the provider as Message Batches.

Under the model's flush lock (one flusher per model in the farm; farm.batches.store), the
jobs due are read, longest waiting first, up to a batch's worth; each request body is built
as a synchronous call's would be (farm.worker.reroute.call_job: the second opinion first
when the job has one to ask, the farm's instructions in; farm.provider.body.wire_body) with
prompt caching's breakpoints at the hour's TTL (farm.costs.prompt_cache.with_breakpoints);
a memoizing job is answered from a memoized answer, or waits for an identical job's, or
goes (farm.batches.memo); the cost cap and hard budgets are checked at the batch price
(farm.batches.admit); the jobs of a paused queue stay waiting. The admitted requests are
cut into batches within the limits; for each, one statement claims the jobs and writes the
batch row (``creating``), then the provider is asked, then its id is kept. A crash in
between leaves the row creating for farm.batches.reconcile.

The provider's answer decides what follows: an id (kept; the poller follows it); a batch
too large (split in halves, each created on its own); a refusal of a one-request batch
(that request fails as an errored result would); any other refusal (the jobs wait for a
later flush); no answer (a timeout, a cut connection: the batch may exist, so the row stays
creating and farm.batches.reconcile finds it or, if it never came to be, gives its jobs
back: a batch is never created twice).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import anthropic
from psycopg import Connection

from farm.batches import admit, memo, policy, results, rows, store
from farm.batches.context import Batching
from farm.batches.submit import WAITING
from farm.costs.admit import job_cap
from farm.costs.estimate import at_batch_price, worst_case
from farm.costs.prompt_cache import cache_ttl, with_breakpoints
from farm.provider.body import wire_body
from farm.provider.errors import kind_for_status
from farm.store import budgets as budget_rows
from farm.store.jobs import StartedJob
from farm.worker import events, reroute

log = logging.getLogger("farm.batches")


@dataclass(frozen=True)
class Request:
    """One job's request of a batch: the body as sent, its size, its worst case."""

    job: store.WaitingJob
    params: dict[str, Any]
    size: int
    worst: Decimal | None  # at the batch price; None: the model has no price
    memo: memo.Keyed | None = None  # a memoizing job's key (farm.batches.memo)


def started(job: store.WaitingJob) -> StartedJob:
    return StartedJob(id=job.id, request=job.request, queue=job.queue, model=job.model,
                      attempt=job.attempts + 1, spent=job.spent,
                      second_opinion=job.second_opinion, routing_calls=job.routing_calls)


def build(b: Batching, job: store.WaitingJob) -> tuple[Request, admit.Candidate]:
    """The job's request as it goes into the batch, and what admission checks of it."""
    opinion = reroute.asks_opinion(started(job))
    sent = reroute.call_job(started(job), opinion).request
    ttl = policy.batch_ttl(cache_ttl(job.request, job.queue, b.settings))
    body = wire_body(job.model, sent)
    keyed = memo.keyed(b, job, opinion, body)
    params = with_breakpoints(body, job.model, ttl)
    price = b.runtime.prices.price(job.model)
    worst = None if price is None else at_batch_price(worst_case(price, sent, ttl))
    size = policy.request_bytes(len(json.dumps(params).encode()))
    return (Request(job, params, size, None if worst is None else worst.usd, keyed),
            admit.Candidate(job.id, job.request.tenant, job.queue, job.model,
                            job_cap(job.request, job.queue, b.settings), job.spent, worst))


def flush(b: Batching, conn: Connection[Any], model: str) -> list[uuid.UUID]:
    """Send the model's waiting jobs if they are due (re-checked under the model's lock);
    returns the ids of the batch rows written. Nothing when another worker is flushing it."""
    if not store.try_flush_lock(conn, model):
        return []
    try:
        waiting = next((w for w in store.waiting(conn) if w.model == model), None)
        if waiting is None or policy.flush_due(waiting, b.config) is None:
            return []
        paused = b.runtime.gate.limiter.paused_queues()  # `farm pause`: they stay waiting
        jobs = [job for job in store.candidates(conn, model, b.config.max_requests)
                if job.queue not in paused]
        built = [build(b, job) for job in jobs]
        # memo hits end here, identical jobs wait (farm.batches.memo): the rest go
        going = memo.at_flush(b, conn, [(r.job, r.memo) for r, _ in built])
        requests = _admitted(b, conn, [x for x, go in zip(built, going, strict=True) if go])
        made: list[uuid.UUID] = []
        for part in policy.chunks([r.size for r in requests], b.config):
            made += create(b, conn, model, [requests[i] for i in part])
        return made
    finally:
        store.flush_unlock(conn, model)


def _admitted(b: Batching, conn: Connection[Any],
              built: list[tuple[Request, admit.Candidate]]) -> list[Request]:
    """The requests whose jobs may go; the others are stopped (dead) or wait."""
    budgets = budget_rows.load(b.db)
    rooms = store.rooms(conn, budgets, datetime.now(UTC)) if budgets else []
    verdicts = admit.check([c for _, c in built], rooms)
    waits: dict[str, list[uuid.UUID]] = {}
    out = []
    for (request, _), verdict in zip(built, verdicts, strict=True):
        if isinstance(verdict, admit.Admit):
            out.append(request)
        elif isinstance(verdict, admit.Wait):
            waits.setdefault(verdict.reason, []).append(verdict.job_id)
        else:
            _stop(b, conn, request.job, verdict)
    for reason, ids in waits.items():
        log.info("%d batch job(s) wait: %s", len(ids), reason)
        store.wait_more(conn, ids, b.config.recheck_s, reason)
    return out


def _stop(b: Batching, conn: Connection[Any], job: store.WaitingJob, stop: admit.Stop) -> None:
    """A job that must make no call: dead, into the dead-letter queue (as a synchronous
    job stopped at admission)."""
    row = store.stop(conn, job.id, stop.reason)
    if row is None:
        return  # cancelled meanwhile
    log.warning("job %s stopped: %s", job.id, stop.reason)
    b.dead_letter(job.id, job.queue, stop.error_class, stop.reason)
    events.job_finished.send(None, queue=job.queue, model=job.model, outcome="dead",
                             duration_s=(datetime.now(UTC) - row["created_at"]).total_seconds())


def create(b: Batching, conn: Connection[Any], model: str, requests: list[Request]
           ) -> list[uuid.UUID]:
    """Claim the requests' jobs into a new batch row and create the batch at the provider;
    returns the batch rows this wrote (and that went on to exist or may exist)."""
    batch_id = uuid.uuid4()
    claimed = store.claim(conn, batch_id, model,
                          [(r.job.id, r.worst, None if r.memo is None else r.memo.key)
                           for r in requests],
                          sum(r.size for r in requests) + policy.BODY_FRAMING,
                          f"in Message Batch {batch_id}")
    requests = [r for r in requests if r.job.id in claimed]
    if not requests:
        return []
    try:
        made = b.client.messages.batches.create(requests=[
            cast(Any, {"custom_id": str(r.job.id), "params": r.params}) for r in requests])
    except anthropic.APIStatusError as exc:
        return _refused(b, conn, model, batch_id, requests, exc)
    except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
        log.warning("batch %s (%d requests to %s): no answer to its creation (%s); it may "
                    "exist: reconcile will look for it", batch_id, len(requests), model,
                    type(exc).__name__)
        return [batch_id]
    rows.created(conn, batch_id, made.id, b.config.poll_s)
    log.info("batch %s created as %s: %d request(s) to %s", batch_id, made.id,
             len(requests), model)
    return [batch_id]


def _refused(b: Batching, conn: Connection[Any], model: str, batch_id: uuid.UUID,
             requests: list[Request], exc: anthropic.APIStatusError) -> list[uuid.UUID]:
    status = exc.status_code
    error = _error_of(exc)
    what = f"{status} {error[0]}: {error[1]}"[:1000]
    if policy.oversized(status, len(requests)):
        store.release(conn, batch_id, wait_s=0, reason=WAITING,
                      error=f"refused as too large ({what}): split in two")
        log.warning("batch of %d request(s) to %s refused (%s): split in two",
                    len(requests), model, status)
        first, second = policy.halves(len(requests))
        return (create(b, conn, model, [requests[i] for i in first])
                + create(b, conn, model, [requests[i] for i in second]))
    if len(requests) == 1 and 400 <= status < 500 and status not in (401, 403, 408, 429):
        # the one request is what the API refuses: it fails as an errored result would
        # (farm.batches.results), and the row says why
        items = rows.items(conn, batch_id)
        results.failed(b, batch_id, None, items[requests[0].job.id],
                       kind_for_status(status, *error), what)
        store.release(conn, batch_id, wait_s=0, reason=WAITING, error=what)
        return [batch_id]
    wait = b.config.poll_s
    released = store.release(conn, batch_id, wait_s=wait, reason=f"{WAITING} (the API "
                             f"refused the last one: {status}; again in {wait:.0f}s)",
                             error=what)
    log.warning("batch of %d request(s) to %s refused (%s %s): %s job(s) wait %.0fs for "
                "another", len(requests), model, status, error[0], released, wait)
    return [batch_id]


def _error_of(exc: anthropic.APIStatusError) -> tuple[str, str]:
    """The API's error type and message (never the request)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else {}
    return str(error.get("type", type(exc).__name__)), str(error.get("message", ""))[:500]
