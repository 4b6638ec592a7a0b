"""The memo step of a job's delivery (farm.worker.tasks), after its start and before
admission (a hit needs no capacity), never for a second opinion's rubric call:

1. a job that does not memoize (farm.memo.policy) goes on as ever (``None``);
2. its key (farm.memo.key) of the body its call would send, on its own model;
3. an answer of its tenant with that key within its TTL: the job ends as a hit (``Hit``);
4. else the in-flight mark (farm.memo.inflight): another identical job calling now makes
   this one wait (``Wait``: handed back with a countdown, no attempt used); else it looks
   once more (an answer may have landed just now), then calls (``Memo``), holding the mark
   unless it waited already (for FARM_MEMO_WAIT_S, or for a holder that left no answer);
5. after the call, a succeeded answer that may serve (farm.memo.policy.reusable) gets its
   key (``remember``), and the holder releases the mark (``release``).

Redis unreachable: the job calls without the mark (memoization saves money; it never stops
a job). Postgres unreachable: the store's patience, as every statement of the worker.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from farm.costs.money import exact
from farm.jobs import JobStatus
from farm.memo import store
from farm.memo.inflight import Claimed
from farm.memo.key import memo_key_of
from farm.memo.policy import memo_policy, queue_spec, reusable, wait_countdown
from farm.provider.body import wire_body
from farm.provider.messages import CallResult
from farm.store import jobs as jobs_store
from farm.worker import runtime as rt

log = logging.getLogger("farm.memo")

WAITING = "memo: waiting for an identical job in flight"  # the waiting job's wait_reason


@dataclass(frozen=True)
class Memo:
    """A memoizing job's call: its key, the model it names, whether it holds the mark."""

    job_id: uuid.UUID
    tenant: str
    key: str
    model: str
    holds: bool


@dataclass(frozen=True)
class Hit:
    """The job was answered from ``original``'s answer; ``recorded`` False: it was no longer
    this start's to end (cancelled meanwhile), and nothing was written."""

    original: store.Original
    recorded: bool

    def result(self, job_id: uuid.UUID) -> dict[str, Any]:
        """The delivery's result (Celery's, Flower's): a hit, what it saved, whose answer."""
        saved = self.original.cost_usd
        return {"job_id": str(job_id), "status": JobStatus.SUCCEEDED.value,
                "cost_usd": str(Decimal(0)), "cache_hit": True,
                "saved_usd": None if saved is None else exact(saved),
                "memo_of": str(self.original.id)}


@dataclass(frozen=True)
class Wait:
    """An identical job is calling: this one was handed back to look again in ``countdown``."""

    countdown: float


def check(runtime: rt.Runtime, job: jobs_store.StartedJob) -> Hit | Wait | Memo | None:
    """The memo step for ``job`` as its call sees it (farm.worker.reroute.call_job)."""
    settings = runtime.settings
    policy = memo_policy(job.request, queue_spec(job.queue, settings.queues), settings)
    if policy is None:
        return None
    tenant, patience = job.request.tenant, settings.db_patience_s
    key = memo_key_of(wire_body(job.model, job.request))
    found = store.lookup(runtime.db, tenant, key, policy.ttl_s, patience_s=patience)
    if found is not None:
        return _hit(runtime, job, key, found)
    claimed, waited_s = _claim(runtime, tenant, key, job.id)
    if claimed is Claimed.WAIT:
        assert runtime.inflight is not None
        countdown = wait_countdown(waited_s, runtime.inflight.wait_s)
        jobs_store.unstart(runtime.db, job, countdown, WAITING, patience_s=patience)
        log.info("job %s waits %.1fs for an identical job in flight", job.id, countdown)
        return Wait(countdown)
    memo = Memo(job.id, tenant, key, job.model, holds=claimed is Claimed.HOLD)
    # the answer may have landed between the lookup and the claim
    found = store.lookup(runtime.db, tenant, key, policy.ttl_s, patience_s=patience)
    if found is not None:
        release(runtime, memo)
        return _hit(runtime, job, key, found)
    if claimed is Claimed.CALL and waited_s > 0:
        log.info("job %s waited %.1fs for an identical job in flight, which left no answer "
                 "to reuse (or took too long): calls itself", job.id, waited_s)
    return memo


def _hit(runtime: rt.Runtime, job: jobs_store.StartedJob, key: str,
         original: store.Original) -> Hit:
    recorded = store.record_hit(runtime.db, job, key, original,
                                patience_s=runtime.settings.db_patience_s)
    if recorded:
        log.info("job %s answered from job %s (memo; saved $%s)", job.id, original.id,
                 original.cost_usd if original.cost_usd is not None else "?")
    return Hit(original, recorded)


def _claim(runtime: rt.Runtime, tenant: str, key: str,
           job_id: uuid.UUID) -> tuple[Claimed, float]:
    """The in-flight mark's answer; CALL (without the mark) when there is no Redis."""
    if runtime.inflight is None:
        return Claimed.CALL, 0.0
    try:
        claim = runtime.inflight.claim(tenant, key, job_id)
    except redis.RedisError as exc:
        log.warning("job %s: the in-flight mark is out of reach (%s): calls without it",
                    job_id, type(exc).__name__)
        return Claimed.CALL, 0.0
    return claim.claimed, claim.waited_s


def remember(runtime: rt.Runtime, memo: Memo | None, sent: jobs_store.StartedJob, *,
             model: str, result: CallResult, status: JobStatus) -> None:
    """After the call on ``model`` is recorded: a succeeded answer that may serve later jobs
    (farm.memo.policy.reusable; not one of another model than the key's) gets the key."""
    if memo is None or status is not JobStatus.SUCCEEDED:
        return
    settings = runtime.settings
    spec = queue_spec(sent.queue, settings.queues)
    if reusable(sent.request, spec, fallback=model != memo.model,
                stop_reason=result.stop_reason, text=result.text,
                short_budget=settings.escalate_short_budget):
        store.remember(runtime.db, memo.job_id, memo.key,
                       patience_s=settings.db_patience_s)


def release(runtime: rt.Runtime, memo: Memo | None) -> None:
    """The holder's mark goes (after its answer is recorded, or the job moved on)."""
    if memo is None or not memo.holds or runtime.inflight is None:
        return
    try:
        runtime.inflight.release(memo.tenant, memo.key, memo.job_id)
    except redis.RedisError as exc:  # it expires by itself
        log.warning("job %s: the in-flight mark could not be released (%s)", memo.job_id,
                    type(exc).__name__)
