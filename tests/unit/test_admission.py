"""Admission (farm.admission.Gate) with a scripted limiter and breaker: no services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from farm.admission import Gate, Go, Later, candidates, waited_s
from farm.breaker import Admission, BreakerState, Decision
from farm.jobs import JobRequest, Priority, Usage
from farm.limits import Grant, Wait
from farm.policies import ErrorKind
from farm.settings import Settings
from farm.store import StartedJob

SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-4-5"
ALLOW = Decision(Admission.ALLOW, 0.0, BreakerState.CLOSED)
PROBE = Decision(Admission.PROBE, 0.0, BreakerState.HALF_OPEN)
REJECT = Decision(Admission.REJECT, 7.0, BreakerState.OPEN)


class FakeLimiter:
    def __init__(self, answers: list[Grant | Wait] | None = None) -> None:
        self.answers = answers or []
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.released: list[tuple[Grant, dict[str, Any]]] = []
        self.paused: list[tuple[str, float]] = []
        self.observed: list[str] = []
        self.queues: set[str] = set()

    def acquire(self, model: str, **kw: Any) -> Grant | Wait:
        self.asked.append((model, kw))
        if self.answers:
            return self.answers.pop(0)
        return Grant(model, "g", kw["tenant"], kw["input_tokens"], kw["output_tokens"])

    def release(self, grant: Grant, **kw: Any) -> None:
        self.released.append((grant, kw))

    def pause(self, model: str, seconds: float) -> None:
        self.paused.append((model, seconds))

    def observe(self, model: str, headers: dict[str, str]) -> None:
        self.observed.append(model)

    def paused_queues(self) -> set[str]:
        return self.queues


class FakeBreaker:
    def __init__(self, decisions: dict[str, Decision] | None = None) -> None:
        self.decisions = decisions or {}
        self.records: list[tuple[str, bool, bool]] = []

    def allow(self, model: str) -> Decision:
        return self.decisions.get(model, ALLOW)

    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState:
        self.records.append((model, success, probe))
        return BreakerState.CLOSED


def job(*, fallback: bool = False, queue: str = "sonnet-complex", model: str = SONNET,
        age_s: float = 0.0, **fields: Any) -> StartedJob:
    request = JobRequest(prompt="Analyze this", allow_fallback=fallback, **fields)
    return StartedJob(uuid.uuid4(), request, queue, model, 1,
                      created_at=datetime.now(UTC) - timedelta(seconds=age_s))


def gate(limiter: FakeLimiter, breaker: FakeBreaker | None = None, **settings: Any
         ) -> tuple[Gate, list[float]]:
    slept: list[float] = []
    g = Gate(limiter, breaker or FakeBreaker(), Settings(**settings),  # type: ignore[arg-type]
             sleep=slept.append, rand=lambda: 0.0)
    return g, slept


def test_candidates_add_the_queues_fallback_only_when_the_job_allows_it() -> None:
    settings = Settings()
    assert candidates(job(), settings) == [SONNET]
    assert candidates(job(fallback=True), settings) == [SONNET, HAIKU]
    assert candidates(job(fallback=True, queue="haiku-simple", model=HAIKU), settings) == [HAIKU]


def test_waited_is_the_jobs_age() -> None:
    assert waited_s(job(age_s=30)) == pytest.approx(30, abs=1)
    assert waited_s(StartedJob(uuid.uuid4(), JobRequest(prompt="x"), "q", "m", 1)) == 0.0


def test_a_grant_goes_at_once_with_the_jobs_estimates() -> None:
    limiter = FakeLimiter()
    g, slept = gate(limiter)
    got = g.admit(job(max_tokens=300, priority=Priority.HIGH, tenant="acme"))
    assert isinstance(got, Go) and got.model == SONNET and not got.fallback and not got.probe
    assert slept == []
    model, asked = limiter.asked[0]
    assert model == SONNET and asked["output_tokens"] == 300
    assert asked["priority"] is Priority.HIGH and asked["tenant"] == "acme"
    assert asked["input_tokens"] > 0


def test_a_scheduled_grant_sleeps_its_delay() -> None:
    g, slept = gate(FakeLimiter([Grant(SONNET, "g", "default", 1, 1, delay_s=1.5)]))
    assert isinstance(g.admit(job()), Go) and slept == [1.5]


def test_short_waits_are_slept_then_the_job_goes() -> None:
    limiter = FakeLimiter([Wait(2.0, "rpm"), Wait(3.0, "rpm")])
    g, slept = gate(limiter, limit_sleep_s=10)
    assert isinstance(g.admit(job()), Go)
    assert slept == [2.0, 3.0] and len(limiter.asked) == 3


def test_a_long_wait_defers_the_job_capped_at_defer_max() -> None:
    g, slept = gate(FakeLimiter([Wait(4.0, "otpm"), Wait(8.0, "otpm")]), limit_sleep_s=10)
    got = g.admit(job())
    assert got == Later(8.0, f"{SONNET}: otpm") and slept == [4.0]  # 4 + 8 > 10
    g, _ = gate(FakeLimiter([Wait(500.0, "rpm")]), defer_max_s=60)
    assert g.admit(job()) == Later(60.0, f"{SONNET}: rpm")


def test_an_open_circuit_falls_back_when_allowed() -> None:
    limiter = FakeLimiter()
    g, slept = gate(limiter, FakeBreaker({SONNET: REJECT}))
    got = g.admit(job(fallback=True))
    assert isinstance(got, Go) and got.model == HAIKU and got.fallback
    assert [m for m, _ in limiter.asked] == [HAIKU] and slept == []


def test_an_open_circuit_without_fallback_defers_without_sleeping() -> None:
    limiter = FakeLimiter()
    g, slept = gate(limiter, FakeBreaker({SONNET: REJECT}))
    assert g.admit(job()) == Later(7.0, f"circuit of {SONNET} is open")
    assert limiter.asked == [] and slept == []
    # both circuits open: the job waits too
    g, _ = gate(limiter, FakeBreaker({SONNET: REJECT, HAIKU: REJECT}))
    assert isinstance(g.admit(job(fallback=True)), Later)


def test_capacity_waits_do_not_fall_back() -> None:
    limiter = FakeLimiter([Wait(50.0, "rpm")])
    g, _ = gate(limiter)
    assert isinstance(g.admit(job(fallback=True)), Later)
    assert [m for m, _ in limiter.asked] == [SONNET]


def test_a_half_open_probe_is_marked() -> None:
    g, _ = gate(FakeLimiter(), FakeBreaker({SONNET: PROBE}))
    got = g.admit(job())
    assert isinstance(got, Go) and got.probe


def test_a_paused_queue_waits_without_asking_for_capacity() -> None:
    limiter = FakeLimiter()
    limiter.queues = {"sonnet-complex"}
    g, _ = gate(limiter, hold_recheck_s=5)
    assert g.admit(job()) == Later(5.0, "queue sonnet-complex is paused")
    assert limiter.asked == []


def _go(probe: bool = False) -> Go:
    return Go(SONNET, Grant(SONNET, "g", "t", 10, 100), probe, False)


def test_done_refunds_with_actual_usage_and_records_success() -> None:
    limiter, breaker = FakeLimiter(), FakeBreaker()
    g, _ = gate(limiter, breaker)
    # cache writes count toward the input limit, cache reads do not
    g.done(_go(), Usage(input_tokens=10, cache_creation_input_tokens=2,
                        cache_read_input_tokens=500, output_tokens=40),
           {"anthropic-ratelimit-requests-limit": "50"})
    assert limiter.released[0][1] == {"input_tokens": 12, "output_tokens": 40}
    assert breaker.records == [(SONNET, True, False)] and limiter.observed == [SONNET]
    g.done(_go(), Usage(input_tokens=1, output_tokens=1), {"x": "1"})
    assert limiter.observed == [SONNET]  # at most once a second per model


@pytest.mark.parametrize(("kind", "paused", "record"), [
    (ErrorKind.RATE_LIMITED, [(SONNET, 3.0)], []),
    (ErrorKind.OVERLOADED, [], [(SONNET, False, False)]),
    (ErrorKind.SERVER, [], [(SONNET, False, False)]),
    (ErrorKind.TIMEOUT, [], [(SONNET, False, False)]),
    (ErrorKind.BAD_REQUEST, [], []),
])
def test_failed_calls(kind: ErrorKind, paused: list[Any], record: list[Any]) -> None:
    limiter, breaker = FakeLimiter(), FakeBreaker()
    g, _ = gate(limiter, breaker)
    g.failed(_go(), kind, retry_after_s=3.0, ratelimit={})
    assert limiter.released[0][1] == {"input_tokens": 0, "output_tokens": 0}
    assert limiter.paused == paused and breaker.records == record


def test_a_probe_answered_with_a_4xx_shows_the_model_is_up() -> None:
    breaker = FakeBreaker()
    g, _ = gate(FakeLimiter(), breaker)
    g.failed(_go(probe=True), ErrorKind.BAD_REQUEST, retry_after_s=None, ratelimit={})
    assert breaker.records == [(SONNET, True, True)]


def test_redis_trouble_after_a_call_never_raises() -> None:
    class Broken(FakeLimiter):
        def release(self, grant: Grant, **kw: Any) -> None:
            raise ConnectionError("redis down")

    g, _ = gate(Broken())
    g.done(_go(), Usage(input_tokens=1, output_tokens=1), {})
    g.failed(_go(), ErrorKind.RATE_LIMITED, retry_after_s=None, ratelimit={})
