"""Admission (farm.capacity.admission.Gate) on the in-memory limiter and breaker: real limits,
real breaker transitions, one manual clock that the gate's own sleeps advance. No services."""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from farm.capacity import admission, limits
from farm.capacity.admission import AdmissionConfig, Gate, Go, Later, candidates, waited_s
from farm.capacity.circuit import BreakerConfig, BreakerState, BreakerValue, window_totals
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.limits import Grant, ModelState, Wait
from farm.capacity.memory import ManualClock, MemoryBreaker, MemoryLimiter
from farm.capacity.ports import Separate
from farm.jobs import JobRequest, Priority, Usage
from farm.provider.errors import ErrorKind
from farm.store.jobs import StartedJob

SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-4-5"
QUEUE = "sonnet-complex"
LIMITS = ModelLimits(rpm=60, itpm=40_000, otpm=8_000)
ADMISSION = AdmissionConfig(fallbacks={QUEUE: HAIKU}, paused_recheck_s=5.0, sleep_max_s=10.0,
                            defer_max_s=60.0)


@dataclass
class Rig:
    clock: ManualClock
    limiter: MemoryLimiter
    breaker: MemoryBreaker
    gate: Gate
    start: float

    @property
    def slept(self) -> float:
        """How far the gate's sleeps moved the clock."""
        return self.clock() - self.start

    def state(self, model: str = SONNET) -> ModelState:
        return self.limiter.read_state(model)[0]

    def cap(self, kind: str, model: str = SONNET) -> float:
        """A bucket's capacity (as configured, before any header or throttle)."""
        return limits.effective(self.limiter.config, model, ModelState(), 0.0).caps[kind]

    def level(self, kind: str, model: str = SONNET) -> float:
        level: float = self.limiter.snapshot(model)["levels"][kind]
        return level

    def open_circuit(self, model: str = SONNET) -> None:
        for _ in range(self.breaker.config.consecutive_failures):
            self.breaker.record(model, success=False, probe=False)
        assert self.breaker.value(model)[0].state is BreakerState.OPEN

    def drain(self, n: int, model: str = SONNET) -> None:
        """n requests of another tenant take n from the rpm bucket, now."""
        for _ in range(n):
            got = self.limiter.acquire(model, input_tokens=0, output_tokens=0,
                                       priority=Priority.HIGH, tenant="bulk")
            assert isinstance(got, Grant) and got.delay_s == 0, got


MAX_NAPS = 100  # far more than any test needs: a gate that keeps sleeping fails, not hangs


def sleeper(clock: ManualClock) -> Callable[[float], None]:
    """The gate's sleep: the clock's, with a bound on how often it is called."""
    naps = itertools.count(1)

    def sleep(seconds: float) -> None:
        assert next(naps) <= MAX_NAPS, f"the gate keeps sleeping ({seconds} s)"
        clock.sleep(seconds)

    return sleep


def rig(models: dict[str, ModelLimits] | None = None, *, breaker: BreakerConfig | None = None,
        admission_config: AdmissionConfig = ADMISSION, **limiter: Any) -> Rig:
    """Buckets of a whole minute and no discovery unless a test asks (pacing itself:
    tests/unit/test_pacing.py)."""
    clock = ManualClock()
    config = LimiterConfig(models={SONNET: LIMITS, HAIKU: LIMITS} if models is None else models,
                           **{"burst_s": 60, "discovery_slots": 0, **limiter})
    lim = MemoryLimiter(config, clock=clock)
    brk = MemoryBreaker(breaker or BreakerConfig(), clock=clock)
    gate = Gate(lim, brk, admission_config, sleep=sleeper(clock), rand=lambda: 0.0)
    return Rig(clock, lim, brk, gate, clock())


def job(*, fallback: bool = False, queue: str = QUEUE, model: str = SONNET,
        age_s: float = 0.0, **fields: Any) -> StartedJob:
    request = JobRequest(prompt="Analyze this", allow_fallback=fallback, **fields)
    return StartedJob(uuid.uuid4(), request, queue, model, 1,
                      created_at=datetime.now(UTC) - timedelta(seconds=age_s))


def admitted(r: Rig, j: StartedJob | None = None) -> Go:
    got = r.gate.admit(j or job())
    assert isinstance(got, Go), got
    return got


def test_candidates_add_the_queues_fallback_only_when_the_job_allows_it() -> None:
    assert candidates(job(), ADMISSION) == [SONNET]
    assert candidates(job(fallback=True), ADMISSION) == [SONNET, HAIKU]
    assert candidates(job(fallback=True, queue="haiku-simple", model=HAIKU), ADMISSION) == [HAIKU]
    # a queue whose fallback is the job's own model has nothing to fall back to
    assert candidates(job(fallback=True, model=HAIKU), ADMISSION) == [HAIKU]


def test_waited_is_the_jobs_age() -> None:
    assert waited_s(job(age_s=30)) == pytest.approx(30, abs=1)
    assert waited_s(StartedJob(uuid.uuid4(), JobRequest(prompt="x"), "q", "m", 1)) == 0.0


def test_a_grant_goes_at_once_with_the_jobs_estimates() -> None:
    r = rig()
    cap, config = r.cap("rpm"), r.limiter.config
    # leave fewer requests than a NORMAL one must leave behind: only HIGH goes at once
    r.drain(math.floor(cap) - 2)
    left = r.level("rpm")
    assert 1 <= left < 1 + config.reserve[Priority.NORMAL] * cap
    j = job(max_tokens=300, priority=Priority.HIGH, tenant="acme")
    got = admitted(r, j)
    assert got.model == SONNET and not got.fallback and not got.probe
    assert r.slept == 0
    estimate = j.request.approx_input_tokens()
    assert estimate > 0
    assert got.grant == Grant(SONNET, got.grant.grant_id, "acme", estimate, 300)
    state = r.state()
    assert state.inflight[got.grant.grant_id] == ("acme", r.start + config.grant_ttl_s)
    assert "acme" in state.active
    assert r.level("rpm") == pytest.approx(left - 1)
    assert r.level("itpm") == pytest.approx(r.cap("itpm") - estimate)
    assert r.level("otpm") == pytest.approx(r.cap("otpm") - 300)


def test_a_scheduled_grant_sleeps_its_delay() -> None:
    r = rig()  # max_delay_s > 0: a grant may be given up to that far ahead
    cap = r.cap("rpm")
    r.drain(math.floor(cap))
    left = r.level("rpm")
    assert left < 1
    delay = (1 - left) / (cap / 60)  # until the bucket holds one request
    assert 0 < delay <= r.limiter.config.max_delay_s
    got = admitted(r, job(priority=Priority.HIGH))
    assert got.grant.delay_s == pytest.approx(delay)
    assert r.slept == pytest.approx(delay)
    # its request was taken ahead: by the time of the call the bucket is just empty again
    assert r.level("rpm") == pytest.approx(0, abs=1e-9)


def test_short_waits_are_slept_then_the_job_goes() -> None:
    # the only slot is held by a call whose grant runs out after grant_ttl_s; until then each
    # ask answers "wait slot_wait_s", which the gate sleeps
    r = rig({SONNET: ModelLimits(max_concurrency=1)}, grant_ttl_s=1.0, slot_wait_s=0.25)
    config = r.limiter.config
    assert config.grant_ttl_s <= ADMISSION.sleep_max_s
    holder = r.limiter.acquire(SONNET, input_tokens=0, output_tokens=0, priority=Priority.HIGH,
                               tenant="bulk")
    assert isinstance(holder, Grant)
    assert r.limiter.acquire(SONNET, input_tokens=0, output_tokens=0, priority=Priority.HIGH,
                             tenant="bulk") == Wait(config.slot_wait_s, "concurrency")
    got = admitted(r)
    assert r.slept == config.grant_ttl_s  # slot_wait_s at a time, until the slot was free
    assert set(r.state().inflight) == {got.grant.grant_id}


def test_jobs_that_use_all_they_reserved_are_paced_by_the_bucket() -> None:
    """done() charges what was used: once otpm is spent, the next job waits until the bucket
    can pay its max_tokens and keep a NORMAL request's reserve of the span (the bucket plus
    the max_delay_s a HIGH one may schedule ahead)."""
    r = rig()
    cap, config = r.cap("otpm"), r.limiter.config
    rate, j = cap / 60, job()
    out, ahead = j.request.max_tokens, config.max_delay_s * cap / 60
    for _ in range(math.floor(cap / out)):
        go = admitted(r, j)
        r.gate.done(go, Usage(input_tokens=go.grant.input_tokens, output_tokens=out), {})
    assert r.slept == 0
    need = out - ahead + config.reserve[Priority.NORMAL] * (cap + ahead)
    wait = (need - r.level("otpm")) / rate
    assert 0 < wait <= ADMISSION.sleep_max_s
    go = admitted(r, j)
    assert r.slept == pytest.approx(wait)
    # here the reserve is more than max_delay_s of the rate: the call goes at once
    assert need > out and go.grant.delay_s == 0


def test_a_long_wait_defers_the_job_capped_at_defer_max() -> None:
    r = rig(max_delay_s=0, reserve={Priority.LOW: 0.5})
    cap, config = r.cap("rpm"), r.limiter.config
    rate = cap / 60
    r.drain(math.floor(cap))
    left = r.level("rpm")
    pause = 4.0
    r.limiter.pause(SONNET, pause)  # a short wait first: slept
    # then a LOW job must wait for its request and its reserve: too long to sleep on. The
    # 429 halved the burst (60 s to 30 s); it has grown back to 30 + pause s by then
    size = cap * (30 + pause) / 60
    need = 1 + config.reserve[Priority.LOW] * size
    wait = (need - (left + pause * rate)) / rate
    assert pause <= ADMISSION.sleep_max_s < pause + wait < ADMISSION.defer_max_s
    got = r.gate.admit(job(priority=Priority.LOW))
    assert isinstance(got, Later) and got.reason == f"{SONNET}: rpm"
    assert got.wait_s == pytest.approx(wait)
    assert r.slept == pause
    # a wait beyond defer_max_s: deferred for defer_max_s, nothing slept
    r = rig()
    r.limiter.pause(SONNET, 10 * ADMISSION.defer_max_s)
    assert r.gate.admit(job()) == Later(ADMISSION.defer_max_s, f"{SONNET}: paused (429)")
    assert r.slept == 0


def test_an_open_circuit_falls_back_when_allowed() -> None:
    r = rig()
    r.open_circuit(SONNET)
    got = admitted(r, job(fallback=True))
    assert got.model == HAIKU and got.fallback and not got.probe
    assert got.grant.model == HAIKU and got.grant.grant_id in r.state(HAIKU).inflight
    assert r.state(SONNET) == ModelState()  # no capacity asked of the open model
    assert r.slept == 0


def test_an_open_circuit_without_fallback_defers_without_sleeping() -> None:
    r = rig()
    cooldown = r.breaker.config.cooldown_s
    r.open_circuit(SONNET)
    r.clock.sleep(cooldown / 2)
    assert r.gate.admit(job()) == Later(cooldown / 2, f"circuit of {SONNET} is open")
    assert r.state(SONNET) == ModelState() and r.slept == cooldown / 2  # only our own move
    # both circuits open: the job waits for the one that reopens first
    r.open_circuit(HAIKU)
    got = r.gate.admit(job(fallback=True))
    assert got == Later(cooldown / 2, f"circuit of {SONNET} is open")
    assert r.state(HAIKU) == ModelState()
    # never deferred for less than a second
    r.clock.sleep(cooldown / 2 - 0.25)
    assert r.gate.admit(job()) == Later(1.0, f"circuit of {SONNET} is open")
    assert r.slept == cooldown - 0.25


def test_capacity_waits_do_not_fall_back() -> None:
    r = rig(max_delay_s=0)
    r.drain(math.floor(r.cap("rpm")))
    got = r.gate.admit(job(fallback=True, priority=Priority.LOW))
    assert isinstance(got, Later) and got.reason == f"{SONNET}: rpm"
    assert r.state(HAIKU) == ModelState()


def test_a_tenant_over_its_share_gives_its_slot_back_instead_of_waiting() -> None:
    """"bulk" took every recent grant; while "small" waits, a bulk job that must wait is
    sent back to the queue at once (the slot is for the other tenant's jobs); once small
    was served, a bulk job with a short wait sleeps in its slot again."""
    r = rig({SONNET: ModelLimits(rpm=60)}, burst_s=5, max_delay_s=0)
    r.drain(math.floor(r.cap("rpm") * 5 / 60))  # bulk takes the bucket (5 s of 58.8/min)
    small = r.limiter.acquire(SONNET, input_tokens=0, output_tokens=0,
                              priority=Priority.NORMAL, tenant="small")
    assert isinstance(small, Wait) and not small.over_share  # small is starved
    got = r.gate.admit(job(tenant="bulk"))
    assert isinstance(got, Later) and r.slept == 0  # nothing slept
    assert got.reason == f"{SONNET}: rpm (tenant over its fair share)"
    assert 0 < got.wait_s <= ADMISSION.sleep_max_s
    r.clock.sleep(small.wait_s)
    small_job = job(tenant="small", max_tokens=1)
    assert isinstance(r.gate.admit(small_job), Go)
    slept = r.slept
    assert isinstance(r.gate.admit(job(tenant="bulk")), Go) and r.slept > slept


def test_a_worker_that_had_answers_ends_a_discovery_redis_forgot() -> None:
    """Redis restarted without its last writes: the model is not known to have answered,
    and a discovery grant whose release was lost holds the one slot until grant_ttl_s. A
    worker that had an answer says so again and goes at once; a fresh one waits."""
    r = rig({}, discovery_slots=1)
    r.gate.done(admitted(r), Usage(input_tokens=1, output_tokens=1), {})
    assert not r.limiter.snapshot(SONNET)["discovering"]
    lost = MemoryLimiter(r.limiter.config, clock=r.clock)  # the restarted Redis
    stale = lost.acquire(SONNET, input_tokens=1, output_tokens=1, priority=Priority.NORMAL,
                         tenant="gone")
    assert isinstance(stale, Grant)
    assert lost.acquire(SONNET, input_tokens=1, output_tokens=1, priority=Priority.NORMAL,
                        tenant="x") == Wait(lost.config.slot_wait_s, limits.DISCOVERY)
    fresh = Gate(lost, MemoryBreaker(BreakerConfig(), clock=r.clock), ADMISSION,
                 sleep=sleeper(r.clock), rand=lambda: 0.0)
    waited = fresh.admit(job())
    assert isinstance(waited, Later) and waited.reason == f"{SONNET}: discovery"
    slept = r.slept
    r.gate.limiter, r.gate.pair = lost, Separate(lost, r.breaker)
    assert isinstance(r.gate.admit(job()), Go) and r.slept == slept  # no wait
    assert not lost.snapshot(SONNET)["discovering"]


class Flaky:
    """A limiter whose store is unreachable for its first ``down`` acquires."""

    def __init__(self, inner: MemoryLimiter, down: int, error: Exception) -> None:
        self.inner, self.down, self.error, self.calls = inner, down, error, 0

    def acquire(self, model: str, **ask: Any) -> Any:
        self.calls += 1
        if self.calls <= self.down:
            raise self.error
        return self.inner.acquire(model, **ask)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def outage_gate(r: Rig, down: int, error: Exception, patience_s: float) -> Gate:
    config = ADMISSION.model_copy(update={"outage_patience_s": patience_s})
    return Gate(Flaky(r.limiter, down, error), r.breaker, config,  # type: ignore[arg-type]
                sleep=sleeper(r.clock), rand=lambda: 0.0,
                transient=lambda exc: isinstance(exc, ConnectionError))


def test_a_short_outage_of_the_store_is_waited_out_in_the_slot() -> None:
    r = rig()
    gate = outage_gate(r, 3, ConnectionError("restarting"), 30.0)
    assert isinstance(gate.admit(job()), Go)
    assert r.slept == 3.0  # three naps of a second, then the grant
    assert len(r.state().inflight) == 1  # granted once


def test_a_long_outage_or_any_other_error_raises() -> None:
    r = rig()
    with pytest.raises(ConnectionError):
        outage_gate(r, 100, ConnectionError("down"), 2.5).admit(job())
    assert r.slept == 2.5 and r.state().inflight == {}
    with pytest.raises(ValueError):  # a bug is not waited out
        outage_gate(r, 1, ValueError("script error"), 30.0).admit(job())
    assert r.slept == 2.5


def test_a_half_open_probe_is_marked() -> None:
    r = rig()
    r.open_circuit(SONNET)
    r.clock.sleep(r.breaker.config.cooldown_s)
    got = admitted(r)
    assert got.model == SONNET and got.probe and not got.fallback
    value, now = r.breaker.value(SONNET)
    assert value.state is BreakerState.HALF_OPEN
    assert value.probe_leases == (now + r.breaker.config.probe_ttl_s,)
    # the one probe is out: the next job is not let through
    later = r.gate.admit(job())
    assert isinstance(later, Later) and later.reason == f"circuit of {SONNET} is open"


def test_a_paused_queue_waits_without_asking_for_capacity() -> None:
    r = rig()
    r.limiter.pause_queue(QUEUE)
    got = r.gate.admit(job())
    assert got == Later(ADMISSION.paused_recheck_s, f"queue {QUEUE} is paused")
    assert r.state(SONNET) == ModelState() and r.slept == 0
    assert isinstance(r.gate.admit(job(queue="haiku-simple", model=HAIKU)), Go)  # per queue


def test_done_refunds_with_actual_usage_records_success_and_follows_headers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig()
    # the gate follows headers at most once a second of its monotonic clock: make it ours
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=r.clock))
    r.breaker.record(SONNET, success=False, probe=False)
    go = admitted(r, job(max_tokens=300))
    assert r.level("itpm") == pytest.approx(r.cap("itpm") - go.grant.input_tokens)
    # cache writes count toward the input limit, cache reads do not
    r.gate.done(go, Usage(input_tokens=10, cache_creation_input_tokens=2,
                          cache_read_input_tokens=500, output_tokens=40),
                {"anthropic-ratelimit-requests-limit": "50"})
    assert r.level("itpm") == pytest.approx(r.cap("itpm") - (10 + 2))
    assert r.level("otpm") == pytest.approx(r.cap("otpm") - 40)
    assert r.state().inflight == {}
    value, now = r.breaker.value(SONNET)
    assert value.failures_in_row == 0  # the success ended the run of failures
    assert window_totals(value, now, r.breaker.config) == (2, 1)
    assert r.state().observed == {"rpm": 50}
    # within the second: the headers are not followed again
    r.gate.done(admitted(r), Usage(input_tokens=1, output_tokens=1),
                {"anthropic-ratelimit-requests-limit": "40"})
    assert r.state().observed == {"rpm": 50}
    r.clock.sleep(1.0)
    r.gate.done(admitted(r), Usage(input_tokens=1, output_tokens=1),
                {"anthropic-ratelimit-requests-limit": "40"})
    assert r.state().observed == {"rpm": 40}


@pytest.mark.parametrize(("kind", "retry_after", "paused_s", "failures"), [
    (ErrorKind.RATE_LIMITED, 3.0, 3.0, 0),
    (ErrorKind.RATE_LIMITED, None, 1.0, 0),  # a 429 without retry-after pauses for a second
    (ErrorKind.OVERLOADED, 3.0, None, 1),
    (ErrorKind.SERVER, 3.0, None, 1),
    (ErrorKind.TIMEOUT, None, None, 1),
    (ErrorKind.CONNECTION, None, None, 1),
    (ErrorKind.BAD_REQUEST, 3.0, None, 0),
])
def test_failed_calls(kind: ErrorKind, retry_after: float | None, paused_s: float | None,
                      failures: int) -> None:
    r = rig()
    go = admitted(r)
    r.gate.failed(go, kind, retry_after_s=retry_after, ratelimit={})
    state = r.state()
    # nothing was used: the reservation goes back (to a full bucket) and the slot is free;
    # a 429 halved the burst, so the full bucket is half as big
    snap = r.limiter.snapshot(SONNET)
    assert state.inflight == {}
    assert snap["burst_s"] == (30.0 if kind is ErrorKind.RATE_LIMITED else 60.0)
    for kind_ in ("itpm", "otpm"):
        assert r.level(kind_) == pytest.approx(r.cap(kind_) * snap["burst_s"] / 60)
    assert state.paused_until == (None if paused_s is None else r.start + paused_s)
    value, now = r.breaker.value(SONNET)
    assert value.failures_in_row == failures
    assert window_totals(value, now, r.breaker.config) == (failures, failures)


def test_enough_failed_calls_open_the_circuit_and_4xx_do_not() -> None:
    r = rig()
    for _ in range(r.breaker.config.consecutive_failures):
        r.gate.failed(admitted(r), ErrorKind.BAD_REQUEST, retry_after_s=None, ratelimit={})
    assert r.breaker.value(SONNET)[0] == BreakerValue()
    for _ in range(r.breaker.config.consecutive_failures):
        r.gate.failed(admitted(r), ErrorKind.OVERLOADED, retry_after_s=None, ratelimit={})
    assert r.breaker.value(SONNET)[0].state is BreakerState.OPEN
    assert isinstance(r.gate.admit(job()), Later)


@pytest.mark.parametrize(("kind", "after"), [
    (ErrorKind.BAD_REQUEST, BreakerState.CLOSED),  # the service answered: it is up
    (ErrorKind.NOT_FOUND, BreakerState.CLOSED),
    (ErrorKind.RATE_LIMITED, BreakerState.HALF_OPEN),  # says nothing about its health
    (ErrorKind.OVERLOADED, BreakerState.OPEN),
])
def test_a_probe_answered_with_a_4xx_shows_the_model_is_up(kind: ErrorKind,
                                                          after: BreakerState) -> None:
    """A 4xx other than 429 closes the circuit; a 429 says nothing; a 529 reopens it."""
    r = rig()
    r.open_circuit(SONNET)
    r.clock.sleep(r.breaker.config.cooldown_s)
    go = admitted(r)
    assert go.probe
    r.gate.failed(go, kind, retry_after_s=None, ratelimit={})
    value = r.breaker.value(SONNET)[0]
    assert value.state is after
    if after is BreakerState.CLOSED:
        assert value == BreakerValue()
    if after is BreakerState.OPEN:
        assert value.reopens == 1  # a failed probe doubles the cooldown


class DownLimiter(MemoryLimiter):
    """Admits (so a call was made), then Redis goes away."""

    def release(self, grant: Grant, **kw: Any) -> None:
        raise ConnectionError("redis down")

    def pause(self, model: str, seconds: float) -> None:
        raise ConnectionError("redis down")

    def observe(self, model: str, headers: Any) -> None:
        raise ConnectionError("redis down")


class DownBreaker(MemoryBreaker):
    def record(self, model: str, *, success: bool, probe: bool) -> BreakerState:
        raise ConnectionError("redis down")


def test_redis_trouble_after_a_call_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    limiter = DownLimiter(LimiterConfig(models={SONNET: LIMITS}), clock=clock)
    breaker = MemoryBreaker(BreakerConfig(), clock=clock)
    gate = Gate(limiter, breaker, ADMISSION, sleep=clock.sleep, rand=lambda: 0.0)
    headers = {"anthropic-ratelimit-requests-limit": "50"}
    go = gate.admit(job())
    assert isinstance(go, Go)
    gate.done(go, Usage(input_tokens=1, output_tokens=1), headers)
    gate.failed(go, ErrorKind.RATE_LIMITED, retry_after_s=None, ratelimit=headers)
    gate.failed(go, ErrorKind.OVERLOADED, retry_after_s=None, ratelimit={})
    # what still worked was done: the breaker has both results
    value, now = breaker.value(SONNET)
    assert window_totals(value, now, breaker.config) == (2, 1)
    # what did not is left as it was: the slot frees itself after grant_ttl_s
    state = limiter.read_state(SONNET)[0]
    assert go.grant.grant_id in state.inflight
    assert state.paused_until is None and state.observed == {}
    assert "finish failed: ConnectionError" in caplog.text  # the release; the record went
    # the breaker down too: still nothing raises
    gate = Gate(limiter, DownBreaker(BreakerConfig(), clock=clock), ADMISSION,
                sleep=clock.sleep, rand=lambda: 0.0)
    go = gate.admit(job())
    assert isinstance(go, Go)
    gate.done(go, Usage(input_tokens=1, output_tokens=1), {})
    gate.failed(go, ErrorKind.SERVER, retry_after_s=None, ratelimit={})
    gate.failed(go, ErrorKind.BAD_REQUEST, retry_after_s=None, ratelimit={})
