"""Retry and dead-letter decisions: pure functions of their inputs, no I/O.

The per-queue policies themselves are configured in ``celeryconfig.py``
(``farm_retry_policies``), next to the routing configuration.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ErrorKind(StrEnum):
    """What went wrong with a provider call, independent of the SDK's classes."""

    RATE_LIMITED = "rate_limited"  # 429
    SPEND_LIMIT = "spend_limit"  # 429 enforced_spend_limit_reached: retrying cannot help
    OVERLOADED = "overloaded"  # 529
    SERVER = "server_error"  # 500-599
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_REQUEST = "bad_request"  # 400
    AUTH = "authentication"  # 401
    PERMISSION = "permission"  # 403
    NOT_FOUND = "not_found"  # 404
    TOO_LARGE = "request_too_large"  # 413
    VALIDATION = "validation"  # the job itself is invalid
    REFUSAL = "refusal"  # stop_reason == refusal
    UNKNOWN = "unknown"


RETRYABLE_DEFAULT = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
    }
)


def kind_for_status(status: int, error_type: str = "", message: str = "") -> ErrorKind:
    """Map an HTTP status (and the API's error type/message) to an ErrorKind."""
    if status == 429:
        text = f"{error_type} {message}".lower()
        if "spend_limit" in text or "spend limit" in text:
            return ErrorKind.SPEND_LIMIT
        return ErrorKind.RATE_LIMITED
    if status == 529:
        return ErrorKind.OVERLOADED
    if status in (408,):
        return ErrorKind.TIMEOUT
    if status >= 500:
        return ErrorKind.SERVER
    return {
        400: ErrorKind.BAD_REQUEST,
        401: ErrorKind.AUTH,
        403: ErrorKind.PERMISSION,
        404: ErrorKind.NOT_FOUND,
        413: ErrorKind.TOO_LARGE,
        422: ErrorKind.BAD_REQUEST,
    }.get(status, ErrorKind.UNKNOWN)


class RetryPolicy(BaseModel):
    """How one queue retries: attempts, backoff with full jitter, and where the dead go."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=50)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    retry_on: frozenset[ErrorKind] = RETRYABLE_DEFAULT
    dead_letter_queue: str = "dead-letter"

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryPolicy:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


class Action(StrEnum):
    RETRY = "retry"  # run again after delay_s
    FAIL = "fail"  # fatal for this job: status failed
    DEAD = "dead"  # retryable but out of attempts: status dead, dead-lettered
    HALT = "halt"  # fatal for the whole farm (spend limit): fail and alert


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    delay_s: float = 0.0
    reason: str


def backoff_s(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]; rand is in [0, 1)."""
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** max(0, attempt - 1))
    return float(max(0.0, min(1.0, rand)) * ceiling)


def decide(
    policy: RetryPolicy,
    kind: ErrorKind,
    attempt: int,
    *,
    retry_after_s: float | None = None,
    rand: float = 1.0,
) -> Decision:
    """What to do after attempt number ``attempt`` (1-based) failed with ``kind``."""
    if kind is ErrorKind.SPEND_LIMIT:
        return Decision(action=Action.HALT, reason="organisation spend limit reached")
    if kind not in policy.retry_on:
        return Decision(action=Action.FAIL, reason=f"{kind.value} is not retryable")
    if attempt >= policy.max_attempts:
        return Decision(
            action=Action.DEAD,
            reason=f"{kind.value} after {attempt} of {policy.max_attempts} attempts",
        )
    delay = backoff_s(policy, attempt, rand)
    if retry_after_s is not None and kind in (ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED):
        # the provider told us when to come back: never earlier than that
        delay = max(delay, min(retry_after_s, policy.backoff_cap_s * 10))
    return Decision(action=Action.RETRY, delay_s=delay, reason=f"{kind.value}, attempt {attempt}")
