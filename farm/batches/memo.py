"""Memoization of batch jobs, by farm.memo's rules (who memoizes and for how long,
farm.memo.policy; the tenant's scope; only answers that may serve), at both ends of a batch:

- at flush (``at_flush``): a memoizing job's key is that of the body its request sends
  (farm.memo.key of farm.provider.body.wire_body, exactly as a synchronous call's), never
  of a second opinion's rubric call. A job whose tenant has an answer with its key within
  its TTL ends as a hit (farm.memo.store: succeeded, cost 0, ``saved_usd``; no attempt, no
  call) and sends ``memo_hit`` and ``job_finished`` as a synchronous hit does. Of identical
  jobs, only the first is sent, and none whose key a batch in flight carries for the tenant
  (farm.batches.policy.memo_fates): the others stay waiting, unclaimed, until a later flush
  of the model (due again after FARM_BATCH_MAX_AGE_S), which finds the answer, or sends one
  of them when the call left none that may serve;
- at a result (``remember``): a succeeded answer that may serve (farm.memo.policy.reusable)
  gets its key on its job, for later jobs, synchronous or batched, to reuse.

The key goes with the request into ``batch_items.memo_key``: what is in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import Connection

from farm.batches import rows, store
from farm.batches.context import Batching
from farm.batches.policy import MemoFate, Memoized, memo_fates
from farm.memo import store as memo_store
from farm.memo.key import memo_key_of
from farm.memo.policy import memo_policy, queue_spec, reusable
from farm.provider.messages import CallResult
from farm.worker import events, reroute

log = logging.getLogger("farm.batches")

WAITING = "memo: waiting for an identical job in a Message Batch"  # a held job's wait_reason


@dataclass(frozen=True)
class Keyed:
    """A memoizing job's request: its memo key, and how old an answer it may reuse."""

    key: str
    ttl_s: int


def keyed(b: Batching, job: store.WaitingJob, opinion: bool,
          body: dict[str, Any]) -> Keyed | None:
    """The memo key of the job's request (``body``: its wire_body, without cache_control);
    None when the job does not memoize, or this call is its second opinion's."""
    if opinion:
        return None
    policy = memo_policy(job.request, queue_spec(job.queue, b.settings.queues), b.settings)
    return None if policy is None else Keyed(memo_key_of(body), policy.ttl_s)


def at_flush(b: Batching, conn: Connection[Any],
             jobs: Sequence[tuple[store.WaitingJob, Keyed | None]]) -> list[bool]:
    """Which of the flush's jobs (in its order) go on to be sent: the others were recorded
    as hits, or wait for an identical job's answer."""
    memoizing = [(i, job, k) for i, (job, k) in enumerate(jobs) if k is not None]
    if not memoizing:
        return [True] * len(jobs)
    # in flight first, then the answers: a batch that is no longer in flight has given its
    # answers their keys, so the lookup after finds them
    flying = store.keys_in_flight(conn, {(job.tenant, k.key) for _, job, k in memoizing})
    found = memo_store.lookup_many(conn, [(job.tenant, k.key, k.ttl_s)
                                          for _, job, k in memoizing])
    answers = {i: original for (i, _, _), original in zip(memoizing, found, strict=True)
               if original is not None}
    fates = memo_fates([Memoized(job.tenant, None if k is None else k.key, i in answers)
                        for i, (job, k) in enumerate(jobs)], flying)
    waiting = []
    for i, ((job, k), fate) in enumerate(zip(jobs, fates, strict=True)):
        if fate is MemoFate.HIT and k is not None:
            _hit(b, job, k.key, answers[i])
        elif fate is MemoFate.WAIT:
            waiting.append(job.id)
    if waiting:
        log.info("%d batch job(s) wait for an identical job's answer", len(waiting))
        store.wait_more(conn, waiting, b.config.max_age_s, WAITING)
    return [fate is MemoFate.SEND for fate in fates]


def _hit(b: Batching, job: store.WaitingJob, key: str, original: memo_store.Original) -> None:
    created = memo_store.record_waiting_hit(b.db, job.id, job.attempts, key, original,
                                            patience_s=b.patience_s)
    if created is None:
        return  # cancelled meanwhile
    log.info("batch job %s answered from job %s (memo; saved $%s)", job.id, original.id,
             original.cost_usd if original.cost_usd is not None else "?")
    events.memo_hit.send(None, queue=job.queue, model=job.model, saved=original.cost_usd)
    events.job_finished.send(None, queue=job.queue, model=job.model, outcome="succeeded",
                             duration_s=(datetime.now(UTC) - created).total_seconds())


def remember(b: Batching, item: rows.Item, answer: CallResult) -> None:
    """After a batch answer is recorded as the job's success: one that may serve later jobs
    gets the key its request was sent with."""
    if item.memo_key is None:
        return
    job = item.job
    sent = reroute.call_job(job, False)
    if reusable(sent.request, queue_spec(job.queue, b.settings.queues), fallback=False,
                stop_reason=answer.stop_reason, text=answer.text,
                short_budget=b.settings.escalate_short_budget):
        memo_store.remember(b.db, job.id, item.memo_key, patience_s=b.patience_s)
