from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from farm.provider.errors import ErrorKind, kind_for_status
from farm.reliability.policies import (
    DEFAULT_RETRY_POLICY,
    RETRYABLE_DEFAULT,
    Action,
    RetryPolicy,
    backoff_s,
    decide_retry,
    policy_for,
)
from farm.settings import DEFAULT_QUEUES

FATAL = [k for k in ErrorKind if k not in RETRYABLE_DEFAULT and k is not ErrorKind.SPEND_LIMIT]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.BAD_REQUEST), (401, ErrorKind.AUTH), (403, ErrorKind.PERMISSION),
        (404, ErrorKind.NOT_FOUND), (413, ErrorKind.TOO_LARGE), (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.SERVER), (502, ErrorKind.SERVER), (503, ErrorKind.SERVER),
        (529, ErrorKind.OVERLOADED), (408, ErrorKind.TIMEOUT), (418, ErrorKind.UNKNOWN),
    ],
)
def test_status_mapping(status: int, kind: ErrorKind) -> None:
    assert kind_for_status(status) is kind


def test_spend_limit_429_is_its_own_kind() -> None:
    assert kind_for_status(429, "rate_limit_error", "enforced_spend_limit_reached") is (
        ErrorKind.SPEND_LIMIT
    )
    assert kind_for_status(429, "rate_limit_error", "Your org spend limit is reached") is (
        ErrorKind.SPEND_LIMIT
    )


@pytest.mark.parametrize("kind", sorted(RETRYABLE_DEFAULT))
@pytest.mark.parametrize("attempt", [1, 2])
def test_retryable_retries_until_the_last_attempt(kind: ErrorKind, attempt: int) -> None:
    decision = decide_retry(RetryPolicy(max_attempts=3), kind, attempt, rand=0.5)
    assert decision.action is Action.RETRY
    assert decision.delay_s >= 0


@pytest.mark.parametrize("kind", sorted(RETRYABLE_DEFAULT))
def test_retryable_on_last_attempt_goes_dead(kind: ErrorKind) -> None:
    decision = decide_retry(RetryPolicy(max_attempts=3), kind, 3)
    assert decision.action is Action.DEAD
    assert "3 of 3" in decision.reason


@pytest.mark.parametrize(("kind", "attempt"), list(itertools.product(FATAL, [1, 2, 3])))
def test_fatal_never_retries(kind: ErrorKind, attempt: int) -> None:
    assert decide_retry(RetryPolicy(), kind, attempt).action is Action.FAIL


@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_spend_limit_halts(attempt: int) -> None:
    assert decide_retry(RetryPolicy(), ErrorKind.SPEND_LIMIT, attempt).action is Action.HALT


def test_policy_can_narrow_what_retries() -> None:
    policy = RetryPolicy(retry_on=frozenset({ErrorKind.OVERLOADED}))
    assert decide_retry(policy, ErrorKind.SERVER, 1).action is Action.FAIL
    assert decide_retry(policy, ErrorKind.OVERLOADED, 1).action is Action.RETRY


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(1, 1.0, 1.0), (2, 1.0, 2.0), (3, 1.0, 4.0), (4, 1.0, 8.0), (10, 1.0, 30.0),
     (3, 0.5, 2.0), (3, 0.0, 0.0), (1, 2.0, 1.0), (1, -1.0, 0.0)],
)
def test_full_jitter_backoff(attempt: int, rand: float, expected: float) -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_cap_s=30.0)
    assert backoff_s(policy, attempt, rand) == pytest.approx(expected)


def test_retry_after_is_a_floor_for_rate_limits() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_cap_s=30.0)
    d = decide_retry(policy, ErrorKind.RATE_LIMITED, 1, retry_after_s=12.0, rand=0.1)
    assert d.delay_s == pytest.approx(12.0)
    d = decide_retry(policy, ErrorKind.OVERLOADED, 1, retry_after_s=0.5, rand=1.0)
    assert d.delay_s == pytest.approx(1.0)
    # retry-after only speaks for 429/529
    d = decide_retry(policy, ErrorKind.SERVER, 1, retry_after_s=12.0, rand=0.1)
    assert d.delay_s == pytest.approx(0.1)


def test_policy_validation() -> None:
    with pytest.raises(ValidationError, match="backoff_cap_s"):
        RetryPolicy(backoff_base_s=10, backoff_cap_s=1)
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_celeryconfig_declares_a_policy_per_queue() -> None:
    import celeryconfig

    for spec in DEFAULT_QUEUES:
        assert isinstance(celeryconfig.farm_retry_policies[spec.name], RetryPolicy)
    assert celeryconfig.farm_retry_policies["default"] is DEFAULT_RETRY_POLICY
    assert celeryconfig.accept_content == ["json"]


def test_a_queue_without_a_policy_follows_the_default() -> None:
    own = RetryPolicy(max_attempts=7)
    configured = RetryPolicy(max_attempts=2)
    assert policy_for({"q": own, "default": configured}, "q") is own
    assert policy_for({"q": own, "default": configured}, "other") is configured
    assert policy_for({"q": own}, "other") is DEFAULT_RETRY_POLICY
