"""Memoization's decisions, pure: whether a job memoizes and how old an answer it may reuse
(``memo_policy``), whether an answer may serve later jobs (``reusable``), and how long a job
waiting for an identical one in flight waits before it looks again (``wait_countdown``).

Who memoizes: the job's ``memo`` (True / False), else its queue's (FARM_QUEUES ``memo``),
else whether its tenant is in FARM_MEMO_TENANTS. The TTL: the job's ``memo_ttl_s``, else its
queue's, else FARM_MEMO_TTL_S.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from farm.jobs import JobRequest
from farm.routing.escalation import out_of_depth
from farm.settings import QueueSpec, Settings

POLL_MIN_S, POLL_MAX_S = 0.5, 5.0  # a waiting job looks again after half its wait so far


@dataclass(frozen=True)
class MemoPolicy:
    """A job memoizes: it reuses an answer at most ``ttl_s`` old."""

    ttl_s: int


def queue_spec(queue: str, queues: Sequence[QueueSpec]) -> QueueSpec | None:
    return next((spec for spec in queues if spec.name == queue), None)


def memo_policy(request: JobRequest, queue: QueueSpec | None,
                settings: Settings) -> MemoPolicy | None:
    """The job's memoization on ``queue``, None when it does not memoize."""
    on = request.memo
    if on is None and queue is not None:
        on = queue.memo
    if on is None:
        on = request.tenant in settings.memo_tenants
    if not on:
        return None
    ttl = request.memo_ttl_s or (queue.memo_ttl_s if queue is not None else None)
    return MemoPolicy(ttl_s=ttl or settings.memo_ttl_s)


def reusable(sent: JobRequest, queue: QueueSpec | None, *, fallback: bool,
             stop_reason: str | None, text: str, short_budget: int) -> bool:
    """Whether a succeeded answer to ``sent`` (the request as sent) may serve later jobs with
    its key: not one of the fallback model (the key names the job's own model), and not one a
    field outside the key could have changed: on a simple queue, an answer that shows the
    model out of its depth was kept only because the job would not escalate (``escalate``,
    its cost cap); an identical job that would, must not get it."""
    if fallback:
        return False
    if queue is None or queue.complexity != "simple":
        return True
    return out_of_depth(sent, stop_reason, text, short_budget=short_budget) is None


def wait_countdown(waited_s: float, wait_s: float) -> float:
    """When a job waiting ``waited_s`` so far for an identical one looks again: after half
    its wait so far (within POLL_MIN_S and POLL_MAX_S), never past its ``wait_s``."""
    poll = min(POLL_MAX_S, max(POLL_MIN_S, waited_s / 2))
    return max(0.0, min(poll, wait_s - waited_s))
