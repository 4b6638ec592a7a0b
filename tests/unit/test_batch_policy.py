"""Message Batches, pure (farm.batches.policy): which jobs batch, when a model's jobs flush,
how a flush splits, the poll backoff, what a result leads to; and reconcile's decision."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from farm.batches import policy
from farm.batches.policy import BatchConfig, FlushReason, ResultType, Waiting
from farm.batches.reconcile import Adopt, Candidate, Release, Wait, decide
from farm.jobs import JobRequest, JobStatus
from farm.provider.errors import ErrorKind
from farm.reliability.policies import RETRYABLE_DEFAULT, Action, RetryPolicy
from farm.settings import Settings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = 86_400.0


def request(batch: bool | None = None, deadline_in_s: float | None = None) -> JobRequest:
    deadline = None if deadline_in_s is None else NOW + timedelta(seconds=deadline_in_s)
    return JobRequest(prompt="p", batch=batch, deadline=deadline)


# --- which jobs batch ------------------------------------------------------------------

@pytest.mark.parametrize(("own", "queue"), list(itertools.product(
    [True, False], [True, False, None])))
@pytest.mark.parametrize("deadline", [None, 60.0, DAY, 2 * DAY])
def test_the_jobs_own_batch_decides_first(own: bool, queue: bool | None,
                                          deadline: float | None) -> None:
    assert policy.wants_batch(request(own, deadline), queue, NOW, DAY) is own


@pytest.mark.parametrize("queue", [True, False])
@pytest.mark.parametrize("deadline", [None, 60.0, DAY, 2 * DAY])
def test_then_the_queues_policy(queue: bool, deadline: float | None) -> None:
    assert policy.wants_batch(request(None, deadline), queue, NOW, DAY) is queue


@pytest.mark.parametrize(("deadline", "batches"), [
    (None, False), (-10.0, False), (60.0, False), (DAY - 1, False), (DAY, True),
    (DAY + 1, True), (30 * DAY, True)])
def test_then_a_deadline_far_enough_away(deadline: float | None, batches: bool) -> None:
    assert policy.wants_batch(request(None, deadline), None, NOW, DAY) is batches


def test_the_deadline_threshold_is_the_setting() -> None:
    assert policy.wants_batch(request(None, 3600.0), None, NOW, 3600.0)
    assert not policy.wants_batch(request(None, 3599.0), None, NOW, 3600.0)


@pytest.mark.parametrize(("ttl", "inside"), [("off", "off"), ("5m", "1h"), ("1h", "1h")])
def test_caching_inside_a_batch_prefers_the_hour(ttl: str, inside: str) -> None:
    assert policy.batch_ttl(ttl) == inside  # type: ignore[arg-type]


# --- flushing and splitting ---------------------------------------------------------

CONFIG = BatchConfig(max_requests=100, max_bytes=10_000, max_age_s=60)


@pytest.mark.parametrize(("count", "nbytes", "age", "reason"), [
    (0, 0, 1e6, None),
    (1, 10, 0.0, None),
    (99, 9_999, 59.9, None),
    (100, 10, 0.0, FlushReason.REQUESTS),
    (150, 10, 0.0, FlushReason.REQUESTS),
    (5, 10_000, 0.0, FlushReason.BYTES),
    (5, 10, 60.0, FlushReason.AGE),
    (100, 10_000, 60.0, FlushReason.REQUESTS),  # the first that holds is named
])
def test_a_models_jobs_flush_by_count_size_or_age(count: int, nbytes: int, age: float,
                                                  reason: FlushReason | None) -> None:
    assert policy.flush_due(Waiting("m", count, nbytes, age), CONFIG) is reason


def test_an_age_of_zero_flushes_at_once() -> None:
    assert policy.flush_due(Waiting("m", 1, 1, 0.0), BatchConfig(max_age_s=0)) is \
        FlushReason.AGE


def _check_chunks(sizes: list[int], config: BatchConfig) -> list[range]:
    parts = policy.chunks(sizes, config)
    assert [i for part in parts for i in part] == list(range(len(sizes)))  # all, in order
    for part in parts:
        assert 1 <= len(part) <= config.max_requests
        total = policy.BODY_FRAMING + sum(sizes[i] for i in part)
        assert total <= config.max_bytes or len(part) == 1
    return parts


def test_chunks_hold_at_most_max_requests() -> None:
    parts = _check_chunks([10] * 250, CONFIG)
    assert [len(p) for p in parts] == [100, 100, 50]


def test_chunks_hold_at_most_max_bytes() -> None:
    parts = _check_chunks([3_000] * 7, CONFIG)
    assert [len(p) for p in parts] == [3, 3, 1]


def test_a_request_over_the_byte_limit_goes_alone() -> None:
    parts = _check_chunks([100, 20_000, 100, 100], CONFIG)
    assert [list(p) for p in parts] == [[0], [1], [2, 3]]


@pytest.mark.parametrize("sizes", [[], [1], [9_984], [9_985], [5_000, 4_984], [5_000, 4_985],
                                   [1] * 100, [1] * 101, [4_000, 1, 1, 6_000, 9_999, 2]])
def test_chunks_stay_within_the_limits(sizes: list[int]) -> None:
    _check_chunks(sizes, CONFIG)


def test_the_api_limits_cannot_be_exceeded() -> None:
    with pytest.raises(ValidationError, match="max_requests"):
        BatchConfig(max_requests=policy.MAX_REQUESTS + 1)
    with pytest.raises(ValidationError, match="max_bytes"):
        BatchConfig(max_bytes=policy.MAX_BYTES + 1)
    with pytest.raises(ValidationError, match="batch_max_requests"):
        Settings(batch_max_requests=10_001)
    with pytest.raises(ValidationError, match="batch_max_bytes"):
        Settings(batch_max_bytes=256_000_001)


def test_the_config_is_built_from_the_settings() -> None:
    config = policy.config_of(Settings(batch_max_requests=500, batch_max_age_s=5,
                                       batch_poll_s=2, batch_poll_max_s=1,
                                       batch_reconcile_s=30, batch_tick_s=0.5))
    assert (config.max_requests, config.max_age_s, config.poll_s, config.reconcile_s,
            config.tick_s) == (500, 5, 2, 30, 0.5)
    assert config.poll_max_s == 2  # never under the first poll's wait
    assert Settings().batch_max_requests == 10_000 and Settings().batch_deadline_s == DAY


@pytest.mark.parametrize(("status", "count", "split"), [
    (413, 2, True), (400, 2, True), (413, 10_000, True), (413, 1, False), (400, 1, False),
    (429, 2, False), (500, 2, False), (401, 2, False), (404, 5, False)])
def test_a_batch_refused_as_too_large_splits(status: int, count: int, split: bool) -> None:
    assert policy.oversized(status, count) is split


@pytest.mark.parametrize("count", [2, 3, 10, 10_001])
def test_halves_cover_the_batch(count: int) -> None:
    first, second = policy.halves(count)
    assert list(first) + list(second) == list(range(count))
    assert first and second and abs(len(first) - len(second)) <= 1


def test_polls_back_off_doubling_to_the_cap() -> None:
    config = BatchConfig(poll_s=10, poll_max_s=300)
    waits = [policy.next_poll_s(n, config) for n in range(8)]
    assert waits == [10, 20, 40, 80, 160, 300, 300, 300]
    assert policy.next_poll_s(10_000, config) == 300  # no overflow


# --- results -----------------------------------------------------------------------------

@pytest.mark.parametrize(("error_type", "message", "kind"), [
    ("invalid_request_error", "", ErrorKind.BAD_REQUEST),
    ("authentication_error", "", ErrorKind.AUTH),
    ("permission_error", "", ErrorKind.PERMISSION),
    ("not_found_error", "", ErrorKind.NOT_FOUND),
    ("timeout_error", "", ErrorKind.TIMEOUT),
    ("request_too_large", "", ErrorKind.TOO_LARGE),
    ("rate_limit_error", "", ErrorKind.RATE_LIMITED),
    ("rate_limit_error", "enforced_spend_limit_reached", ErrorKind.SPEND_LIMIT),
    ("api_error", "", ErrorKind.SERVER),
    ("overloaded_error", "", ErrorKind.OVERLOADED),
    ("billing_error", "", ErrorKind.UNKNOWN),
    ("something_new", "", ErrorKind.UNKNOWN),
    ("", "", ErrorKind.UNKNOWN),
])
def test_an_errored_result_is_classed_by_its_error_type(error_type: str, message: str,
                                                        kind: ErrorKind) -> None:
    assert policy.error_kind(ResultType.ERRORED, error_type, message) is kind


def test_expired_and_canceled_are_their_own_retryable_kinds() -> None:
    assert policy.error_kind(ResultType.EXPIRED) is ErrorKind.EXPIRED
    assert policy.error_kind(ResultType.CANCELED) is ErrorKind.CANCELED
    assert {ErrorKind.EXPIRED, ErrorKind.CANCELED} <= RETRYABLE_DEFAULT


RETRY = RetryPolicy(max_attempts=3, backoff_base_s=1, backoff_cap_s=30)


@pytest.mark.parametrize("kind", list(ErrorKind))
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_failed_request_follows_the_retry_policy(kind: ErrorKind, attempt: int) -> None:
    failure = policy.on_failure(kind, RETRY, attempt, cancelled=False, rand=0.5)
    assert failure.decision is not None and failure.kind is kind
    action = failure.decision.action
    assert failure.status is policy.NEXT_STATUS[action]
    if kind is ErrorKind.SPEND_LIMIT:
        assert action is Action.HALT and failure.status is JobStatus.FAILED
    elif kind not in RETRYABLE_DEFAULT:
        assert action is Action.FAIL and failure.status is JobStatus.FAILED
    elif attempt < 3:
        assert action is Action.RETRY and failure.status is JobStatus.QUEUED
        assert failure.retry_in_s is not None and 0 <= failure.retry_in_s <= 30
    else:
        assert action is Action.DEAD and failure.status is JobStatus.DEAD
    assert failure.dead_letter is (action is not Action.RETRY)
    assert (failure.retry_in_s is None) is (action is not Action.RETRY)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_a_cancelled_job_stays_cancelled_whatever_its_result(kind: ErrorKind) -> None:
    failure = policy.on_failure(kind, RETRY, 1, cancelled=True)
    assert failure.status is JobStatus.CANCELLED and failure.decision is None
    assert not failure.dead_letter and failure.retry_in_s is None


# --- reconcile: a row left creating --------------------------------------------------------

JOBS = [uuid.uuid4() for _ in range(3)]
OURS = frozenset(map(str, JOBS))


@pytest.mark.parametrize(("candidates", "age", "verdict"), [
    ([], 10.0, Wait), ([], 119.9, Wait), ([], 120.0, Release), ([], 1e6, Release),
    ([Candidate("b1", False)], 1e6, Wait),
    ([Candidate("b1", True, OURS)], 0.0, Adopt),
    ([Candidate("b1", True, frozenset({"x", "y", "z"}))], 1e6, Release),
    ([Candidate("b1", True, frozenset({"x", "y", "z"}))], 1.0, Wait),
    ([Candidate("b1", True, OURS - {str(JOBS[0])})], 1e6, Release),
    ([Candidate("b1", False), Candidate("b2", True, OURS)], 1e6, Adopt),
    ([Candidate("b1", True, frozenset({"x"})), Candidate("b2", False)], 1e6, Wait),
])
def test_reconcile_adopts_only_its_own_and_never_releases_what_may_exist(
        candidates: list[Candidate], age: float, verdict: type) -> None:
    got = decide(JOBS, candidates, age, 120.0)
    assert isinstance(got, verdict)
    if isinstance(got, Adopt):
        assert got.provider_id == next(c.provider_id for c in candidates
                                       if c.custom_ids == OURS)
