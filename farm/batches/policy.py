"""Message Batches, pure: no I/O. Which jobs batch, when a model's waiting jobs are sent,
how one flush splits into batches the API accepts, how often a batch in flight is polled,
and what each result leads to.

- A job batches when it says so (``batch=True``; ``False`` never); saying nothing, when its
  queue's policy says so (``QueueSpec.batch``), or when its deadline is at least
  FARM_BATCH_DEADLINE_S away (the API answers or expires a batch within 24 hours).
- A model's waiting jobs flush once FARM_BATCH_MAX_REQUESTS of them wait, or their bodies
  reach FARM_BATCH_MAX_BYTES, or the oldest has waited FARM_BATCH_MAX_AGE_S.
- A flush is cut, in order, into batches of at most ``max_requests`` requests and
  ``max_bytes`` bytes of request body (the API's limits: 10,000 requests and 256 MB; one
  version of its reference says 100,000, the smaller is kept). An answer that the batch is
  too large (413, or a 400 for a batch of more than one request) splits it in halves, each
  created on its own.
- A batch in flight is polled after FARM_BATCH_POLL_S, then twice as long each time, up to
  FARM_BATCH_POLL_MAX_S.
- A memoizing job (farm.memo.policy) with an answer within its TTL is a hit at flush, not
  sent; of identical ones (one tenant, one key) only the first goes, and none while a batch
  in flight carries the key: the others wait for a later flush (``memo_fates``).
- A result: succeeded is recorded (at half price); errored, expired and canceled follow the
  queue's retry policy (``farm.reliability.policies.decide_retry``): a retried job waits for
  a later batch, a dead one goes to the dead-letter queue. A job cancelled meanwhile stays
  cancelled whatever its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from farm.costs.caching import CacheSetting
from farm.jobs import JobRequest, JobStatus
from farm.provider.errors import ErrorKind, kind_for_status
from farm.reliability.policies import Action, RetryDecision, RetryPolicy, decide_retry
from farm.settings import Settings

MAX_REQUESTS = 10_000  # per batch: the smaller of the two figures the API documents
MAX_BYTES = 256_000_000  # per batch: 256 MB of request body
# the bytes of one request around its params ({"custom_id": "<uuid>", "params": …},) and of
# the body around the requests ({"requests": […]})
REQUEST_FRAMING = 64
BODY_FRAMING = 16


class BatchConfig(BaseModel):
    """What the batch loop needs of the settings (built at the edge: ``config_of``)."""

    model_config = ConfigDict(frozen=True)

    max_requests: int = Field(default=MAX_REQUESTS, ge=1, le=MAX_REQUESTS)
    max_bytes: int = Field(default=MAX_BYTES, ge=1, le=MAX_BYTES)
    max_age_s: float = Field(default=60.0, ge=0)
    poll_s: float = Field(default=10.0, gt=0)
    poll_max_s: float = Field(default=300.0, gt=0)
    deadline_s: float = Field(default=86_400.0, gt=0)
    reconcile_s: float = Field(default=120.0, ge=0)
    tick_s: float = Field(default=2.0, gt=0)
    # a budget that cannot take a job now: the job is looked at again after this long
    recheck_s: float = Field(default=30.0, gt=0)


def config_of(settings: Settings) -> BatchConfig:
    return BatchConfig(
        max_requests=settings.batch_max_requests, max_bytes=settings.batch_max_bytes,
        max_age_s=settings.batch_max_age_s, poll_s=settings.batch_poll_s,
        poll_max_s=max(settings.batch_poll_max_s, settings.batch_poll_s),
        deadline_s=settings.batch_deadline_s, reconcile_s=settings.batch_reconcile_s,
        tick_s=settings.batch_tick_s, recheck_s=settings.hold_recheck_s)


# --- which jobs batch ------------------------------------------------------------------

def wants_batch(request: JobRequest, queue_batch: bool | None, now: datetime,
                deadline_s: float) -> bool:
    """Whether a job waits for a Message Batch: its own ``batch`` if set, else its queue's,
    else whether its deadline is at least ``deadline_s`` after ``now``."""
    if request.batch is not None:
        return request.batch
    if queue_batch is not None:
        return queue_batch
    if request.deadline is None:
        return False
    return (request.deadline - now).total_seconds() >= deadline_s


def batch_ttl(ttl: CacheSetting) -> CacheSetting:
    """The prompt-cache TTL of a request inside a batch: the hour whenever caching is on (a
    batch can take longer than five minutes to be processed)."""
    return "off" if ttl == "off" else "1h"


# --- when and how a model's waiting jobs go ---------------------------------------------

class FlushReason(StrEnum):
    REQUESTS = "requests"
    BYTES = "bytes"
    AGE = "age"


@dataclass(frozen=True)
class Waiting:
    """A model's jobs that wait for a batch and are due: how many, their request bytes
    (an estimate from the stored requests), and how long the oldest has waited."""

    model: str
    count: int
    bytes: int
    oldest_age_s: float


def flush_due(waiting: Waiting, config: BatchConfig) -> FlushReason | None:
    """Why the model's waiting jobs go now; None: they wait for more."""
    if waiting.count <= 0:
        return None
    if waiting.count >= config.max_requests:
        return FlushReason.REQUESTS
    if waiting.bytes >= config.max_bytes:
        return FlushReason.BYTES
    if waiting.oldest_age_s >= config.max_age_s:
        return FlushReason.AGE
    return None


def request_bytes(params_bytes: int) -> int:
    """What one request adds to a batch's body."""
    return params_bytes + REQUEST_FRAMING


def chunks(sizes: Sequence[int], config: BatchConfig) -> list[range]:
    """Requests (their ``request_bytes``, in order) cut, in order, into batches within the
    limits. A request over ``max_bytes`` on its own still gets a batch of its own: the API
    says so (413), and that one request fails."""
    out: list[range] = []
    start, used = 0, BODY_FRAMING
    for i, size in enumerate(sizes):
        full = i - start >= config.max_requests or used + size > config.max_bytes
        if full and i > start:
            out.append(range(start, i))
            start, used = i, BODY_FRAMING
        used += size
    if start < len(sizes):
        out.append(range(start, len(sizes)))
    return out


def oversized(status: int, count: int) -> bool:
    """Whether the API's refusal of a batch of ``count`` requests says it is too large:
    split it in halves and create each."""
    return count > 1 and status in (400, 413)


def halves(count: int) -> tuple[range, range]:
    middle = count // 2
    return range(0, middle), range(middle, count)


def next_poll_s(polls: int, config: BatchConfig) -> float:
    """The wait before poll number ``polls + 1`` of a batch (``polls`` made so far)."""
    return float(min(config.poll_max_s, config.poll_s * 2 ** min(max(0, polls), 30)))


# --- memoization at flush (farm.batches.memo) --------------------------------------------

class MemoFate(StrEnum):
    SEND = "send"  # into a batch: it does not memoize, or it is the one of its key to call
    HIT = "hit"  # answered from a memoized answer: not sent
    WAIT = "wait"  # an identical job calls (in this flush, or in a batch in flight): it waits


@dataclass(frozen=True)
class Memoized:
    """A job of a flush as memoization sees it: its tenant, its memo key (None: it does not
    memoize, or this call is its second opinion's), whether an answer within its TTL exists."""

    tenant: str
    key: str | None
    answered: bool = False


def memo_fates(jobs: Sequence[Memoized],
               in_flight: AbstractSet[tuple[str, str]]) -> list[MemoFate]:
    """What each of a flush's jobs (in the flush's order) does: one with an answer is a hit;
    of the others with one (tenant, key), only the first is sent, and none while a batch in
    flight carries that key for that tenant: the rest wait, to be a hit at a later flush, or
    sent then if the one that called left no answer to reuse."""
    calling = set(in_flight)
    fates = []
    for job in jobs:
        if job.key is None:
            fates.append(MemoFate.SEND)
        elif job.answered:
            fates.append(MemoFate.HIT)
        elif (job.tenant, job.key) in calling:
            fates.append(MemoFate.WAIT)
        else:
            calling.add((job.tenant, job.key))
            fates.append(MemoFate.SEND)
    return fates


# --- what a result leads to -------------------------------------------------------------

class ResultType(StrEnum):
    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"


# the API's error types, as the HTTP status each one comes with on a synchronous call
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "timeout_error": 408,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "overloaded_error": 529,
}


def error_kind(result: ResultType, error_type: str = "", message: str = "") -> ErrorKind:
    """The error class of a result that did not succeed."""
    if result is ResultType.EXPIRED:
        return ErrorKind.EXPIRED
    if result is ResultType.CANCELED:
        return ErrorKind.CANCELED
    status = ERROR_TYPE_STATUS.get(error_type)
    return ErrorKind.UNKNOWN if status is None else kind_for_status(status, error_type, message)


@dataclass(frozen=True)
class Failure:
    """What a result that did not succeed leads to: the job's next status, and the retry
    policy's decision (None: the job had been cancelled, nothing follows)."""

    status: JobStatus
    kind: ErrorKind
    decision: RetryDecision | None

    @property
    def retry_in_s(self) -> float | None:
        d = self.decision
        return d.delay_s if d is not None and d.action is Action.RETRY else None

    @property
    def dead_letter(self) -> bool:
        return self.decision is not None and self.decision.action is not Action.RETRY


NEXT_STATUS = {Action.RETRY: JobStatus.QUEUED, Action.DEAD: JobStatus.DEAD,
               Action.FAIL: JobStatus.FAILED, Action.HALT: JobStatus.FAILED}


def on_failure(kind: ErrorKind, policy: RetryPolicy, deliveries: int, *, cancelled: bool,
               rand: float = 1.0) -> Failure:
    """A result that did not succeed, for the attempt ``deliveries`` (the job's attempts
    but those spent routing it), as the synchronous path decides it."""
    if cancelled:
        return Failure(JobStatus.CANCELLED, kind, None)
    decision = decide_retry(policy, kind, deliveries, rand=rand)
    return Failure(NEXT_STATUS[decision.action], kind, decision)
