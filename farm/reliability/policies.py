"""Retry and dead-letter decisions: pure functions of their inputs, no I/O.

The per-queue policies themselves are configured in ``celeryconfig.py``
(``farm_retry_policies``), next to the routing configuration; a queue without one of its own
follows the ``"default"`` entry, and without that, ``DEFAULT_RETRY_POLICY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.broker.layout import DEAD_LETTER_QUEUE
from farm.provider.errors import ErrorKind

RETRYABLE_DEFAULT = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.ABANDONED,
        # a Message Batch request not processed (farm.batches): a later batch may be
        ErrorKind.EXPIRED,
        ErrorKind.CANCELED,
    }
)


class RetryPolicy(BaseModel):
    """How one queue retries: attempts, backoff with full jitter, and where the dead go."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=50)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    retry_on: frozenset[ErrorKind] = RETRYABLE_DEFAULT
    dead_letter_queue: str = DEAD_LETTER_QUEUE

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryPolicy:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


DEFAULT_RETRY_POLICY = RetryPolicy()


def policy_for(policies: Mapping[str, RetryPolicy], queue: str) -> RetryPolicy:
    """A queue's own policy, else the configured "default", else DEFAULT_RETRY_POLICY."""
    return policies.get(queue) or policies.get("default") or DEFAULT_RETRY_POLICY


class Action(StrEnum):
    RETRY = "retry"  # run again after delay_s
    FAIL = "fail"  # fatal for this job: status failed
    DEAD = "dead"  # retryable but out of attempts: status dead, dead-lettered
    HALT = "halt"  # fatal for the whole farm (spend limit): fail and alert


class RetryDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    delay_s: float = 0.0
    reason: str


def backoff_s(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]; rand is in [0, 1)."""
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** max(0, attempt - 1))
    return float(max(0.0, min(1.0, rand)) * ceiling)


def decide_retry(
    policy: RetryPolicy,
    kind: ErrorKind,
    attempt: int,
    *,
    retry_after_s: float | None = None,
    rand: float = 1.0,
) -> RetryDecision:
    """What to do after attempt number ``attempt`` (1-based) failed with ``kind``."""
    if kind is ErrorKind.SPEND_LIMIT:
        return RetryDecision(action=Action.HALT, reason="organisation spend limit reached")
    if kind not in policy.retry_on:
        return RetryDecision(action=Action.FAIL, reason=f"{kind.value} is not retryable")
    if attempt >= policy.max_attempts:
        return RetryDecision(
            action=Action.DEAD,
            reason=f"{kind.value} after {attempt} of {policy.max_attempts} attempts",
        )
    delay = backoff_s(policy, attempt, rand)
    if retry_after_s is not None and kind in (ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED):
        # the provider told us when to come back: never earlier than that
        delay = max(delay, min(retry_after_s, policy.backoff_cap_s * 10))
    return RetryDecision(action=Action.RETRY, delay_s=delay,
                         reason=f"{kind.value}, attempt {attempt}")
