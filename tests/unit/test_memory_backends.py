"""The in-memory limiter and breaker (farm.capacity.memory) are the pure twins on a dict:
a seeded random sequence of operations gives the same answers and states as the pure
functions applied by hand; plus their validation and operator paths. No services.
(tests/integration/test_memory_parity.py runs the same kind of sequence against Redis.)"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from farm.capacity import limits
from farm.capacity.circuit import (
    Admission,
    BreakerConfig,
    BreakerState,
    BreakerValue,
    Event,
    report,
    transition,
)
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.fairness import over_share
from farm.capacity.headers import parse_headers
from farm.capacity.limits import Grant, ModelState, Wait
from farm.capacity.memory import ManualClock, MemoryBreaker, MemoryLimiter
from farm.jobs import Priority
from tests_support import random_headers, throttle_both

TENANTS = ("acme", "beta", "cyan")
CONFIG = LimiterConfig(
    models={"m": ModelLimits(rpm=20, itpm=20_000, otpm=12_000, max_concurrency=5),
            "c": ModelLimits(max_concurrency=3), "r": ModelLimits(rpm=3)},
    tenant_window_s=20, grant_ttl_s=30, max_wait_s=15)
MODELS = ("m", "m", "m", "c", "r", "r", "seen", "free")  # seen: limits only from headers
ASK: dict[str, Any] = {"input_tokens": 10, "output_tokens": 100, "priority": Priority.HIGH,
                       "tenant": "t"}


def invalid_call(rng: random.Random, lim: MemoryLimiter, model: str) -> None:
    """One call the limiter must refuse, whatever its state."""
    bad = rng.choice(["tenant", "tokens", "priority", "throttle", "pause"])
    if bad == "tenant":
        lim.acquire(model, **{**ASK, "tenant": rng.choice(["", "a|b"])})
    elif bad == "tokens":
        lim.acquire(model, **{**ASK, rng.choice(["input_tokens", "output_tokens"]): -1})
    elif bad == "priority":
        lim.acquire(model, **{**ASK, "priority": "urgent"})
    elif bad == "throttle":
        lim.throttle(model, rng.choice([0, 0.5, 101, math.nan]))
    else:
        lim.pause(model, rng.choice([-1.0, math.nan, math.inf]))


def answered(lim: MemoryLimiter) -> MemoryLimiter:
    """The provider has answered m and r (without headers): their buckets hold their whole
    burst, not the small one of a model not heard from yet (farm.capacity.limits)."""
    for model in ("m", "r"):
        lim.observe(model, {})
    return lim


def non_negative(value: int | None) -> int | None:
    return None if value is None else max(0, value)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_limiter_is_the_pure_twin_step_by_step(seed: int) -> None:
    clock, rng = ManualClock(), random.Random(seed)
    lim = MemoryLimiter(CONFIG, clock=clock)
    states = {m: ModelState() for m in (*MODELS, "idle")}
    followed: set[str] = set()  # models observed, paused or throttled
    held: list[Grant] = []
    seen: Counter[str] = Counter()
    for _ in range(900):
        clock.sleep(rng.choice([0.0, 0.0, 0.05, 0.1, 0.3, 1.0, 2.5, 7.0]))
        now, model = clock(), rng.choice(MODELS)
        op = rng.choices(["acquire", "release", "observe", "pause", "throttle", "invalid"],
                         [60, 25, 8, 3, 4, 3])[0]
        if op == "release" and held:
            grant = held.pop(rng.randrange(len(held)))
            model = grant.model
            used: dict[str, int | None] = {
                "input_tokens": rng.choice([None, rng.randint(0, 3000), -rng.randint(1, 500)]),
                "output_tokens": rng.choice([None, rng.randint(0, grant.output_tokens),
                                             -rng.randint(1, 500)])}
            lim.release(grant, **used)
            # negative usage counts as 0: release runs in cleanup paths and never raises
            _, states[model] = limits.settle(CONFIG, states[model], now, grant,
                                             **{k: non_negative(v) for k, v in used.items()})
            seen["release"] += 1
        elif op == "observe":
            # "free": an answer without rate-limit headers (it ends the model's discovery)
            headers = {} if model == "free" else random_headers(rng, now=now)
            lim.observe(model, headers)
            parsed = parse_headers(headers, now)
            states[model] = limits.observe(CONFIG, model, states[model], now, parsed)
            followed.add(model)
            seen["short burst"] += (parsed.burst_s or 60) < CONFIG.burst_s
        elif op == "pause":
            secs = rng.choice([0.5, 2.0, 6.0])
            lim.pause(model, secs)
            states[model] = limits.pause(CONFIG, states[model], now, secs)
            followed.add(model)
        elif op == "throttle":
            percent = rng.choice([None, 100, 50, 80, 25.5, 1])
            model = rng.choice([model, "free", "idle"])  # idle: no limits, no calls
            done = throttle_both(lim, CONFIG, states, model, now, percent)
            seen[done] += 1
            if done != "nothing to throttle":
                followed.add(model)
        elif op == "invalid":
            with pytest.raises(ValueError):
                invalid_call(rng, lim, model)
            seen["invalid"] += 1
        else:
            ask: dict[str, Any] = {
                "input_tokens": rng.randint(0, 3000), "output_tokens": rng.choice(
                    [100, 1000, 4000, 9000]), "priority": rng.choice(list(Priority)),
                "tenant": rng.choice(TENANTS), "waited_s": rng.choice([0.0, 0.0, 0.0, 20.0])}
            before, got = states[model], lim.acquire(model, **ask)
            if over_share(CONFIG, before.starved, before.usage, now, ask["tenant"]):
                seen["over share"] += 1
            seen["discovery"] += (model in ("free", "seen") and not before.answered
                                  and isinstance(got, Grant))
            gid = got.grant_id if isinstance(got, Grant) else "none"
            want, states[model] = limits.acquire(CONFIG, model, states[model], now,
                                                grant_id=gid, **ask)
            assert got == want
            if isinstance(got, Grant):
                held.append(got)
                seen["grant" if got.grant_id else "unlimited"] += 1
                seen["scheduled"] += got.delay_s > 0
            else:
                seen[got.reason] += 1
        assert lim.read_state(model) == (states[model], now)
        assert lim.snapshot(model) == limits.describe(CONFIG, model, states[model], now)
        assert lim.models() == sorted(followed | set(CONFIG.models))
    # the sequence really went through the interesting branches
    assert seen["grant"] > 50 and seen["release"] > 30 and seen["unlimited"] > 0
    assert seen["invalid"] > 0 and seen["scheduled"] > 0 and seen["discovery"] > 0
    assert {"rpm", "concurrency", "tenant-concurrency", "paused (429)", "over share",
            "throttled by rate", "nothing to throttle", "short burst"} <= set(seen), seen
    assert len({g.grant_id for g in held if g.grant_id}) == sum(1 for g in held if g.grant_id)


@pytest.mark.parametrize("seed", range(4))
def test_the_breaker_is_the_pure_twin_step_by_step(seed: int) -> None:
    config = BreakerConfig(consecutive_failures=4, window_s=3, failure_ratio=0.5, min_calls=6,
                           cooldown_s=1, max_cooldown_s=4, probes=2, probe_ttl_s=2)
    rng = random.Random(seed)
    clock = ManualClock(1_700_000_000.0 + rng.random())
    breaker = MemoryBreaker(config, clock=clock)
    values = {"a": BreakerValue(), "b": BreakerValue()}
    seen: set[Any] = set()
    for _ in range(400):
        clock.sleep(rng.choice((0.0, 0.01, 0.3, 0.7, 1.3)))
        model, now = rng.choice(("a", "a", "a", "b")), clock()
        if rng.random() < 0.01:
            breaker.reset(model)
            values[model] = BreakerValue()
            seen.add("reset")
        else:
            event = rng.choices(list(Event), weights=(4, 3, 3))[0]
            probe = rng.random() < 0.5
            values[model], expected = transition(values[model], event, now, config,
                                                 probe=probe)
            if event is Event.ALLOW:
                assert expected is not None
                assert breaker.allow(model) == expected
                seen.add(expected.admission)
            else:
                got = breaker.record(model, success=event is Event.SUCCESS, probe=probe)
                assert got is values[model].state
        for name, value in values.items():
            assert breaker.value(name) == (value, now)
            assert breaker.state(name) == report(name, value, now, config)
        seen.add(values[model].state)
    assert seen == {*Admission, *BreakerState, "reset"}


def test_invalid_calls_are_refused_and_change_nothing() -> None:
    lim = MemoryLimiter(CONFIG, clock=ManualClock())
    for tokens in ({"input_tokens": -1}, {"output_tokens": -1}):
        with pytest.raises(ValueError, match=">= 0"):
            lim.acquire("m", **{**ASK, **tokens})
    for tenant in ("", "a|b"):
        with pytest.raises(ValueError, match="tenant must be non-empty"):
            lim.acquire("m", **{**ASK, "tenant": tenant})
    with pytest.raises(ValueError, match="not a valid Priority"):
        lim.acquire("m", **{**ASK, "priority": "urgent"})
    for percent in (0, 0.5, 101, math.nan):
        with pytest.raises(ValueError, match="between 1 and 100"):
            lim.throttle("x", percent)
    for seconds in (-1.0, -math.inf, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and >= 0"):
            lim.pause("x", seconds)
    for model in ("m", "x"):
        assert lim.read_state(model)[0] == ModelState()
    assert lim.models() == sorted(CONFIG.models)  # refused calls do not register "x"


def test_throttle_scales_the_limits_and_clears() -> None:
    config = LimiterConfig(models={"m": ModelLimits(rpm=600, max_concurrency=4)},
                           discovery_slots=0)  # "other" is free from its first call
    lim = MemoryLimiter(config, clock=ManualClock())
    lim.throttle("m", 50)
    snap = lim.snapshot("m")
    assert snap["throttle_percent"] == 50.0
    assert snap["effective"]["rpm"] == pytest.approx(600 * 0.5 * config.target)
    assert snap["effective"]["max_concurrency"] == 4 * 50 // 100
    grants = [lim.acquire("m", **ASK) for _ in range(2)]
    assert all(isinstance(g, Grant) for g in grants)
    assert lim.acquire("m", **ASK) == Wait(config.slot_wait_s, "concurrency")
    for percent in (None, 100):  # both mean: the whole limit
        lim.throttle("m", percent)
        snap = lim.snapshot("m")
        assert snap["throttle_percent"] is None
        assert snap["effective"]["rpm"] == pytest.approx(600 * config.target)
        assert snap["effective"]["max_concurrency"] == 4
    assert isinstance(lim.acquire("m", **ASK), Grant)
    # a model without limits: a throttle needs its recent calls to take a percent of
    with pytest.raises(limits.NothingToThrottle, match="other has no limits"):
        lim.throttle("other", 25)
    assert lim.models() == ["m"]
    for _ in range(30):
        assert lim.acquire("other", **ASK) == Grant("other", "", "t", 10, 100)
    base = lim.throttle("other", 25)  # remembered and listed
    snap = lim.snapshot("other")
    assert base == snap["throttle_base_rpm"] == pytest.approx(30 * limits.LN2 / 30 * 60)
    assert snap["throttle_percent"] == 25.0 and lim.models() == ["m", "other"]
    assert snap["effective"]["rpm"] == pytest.approx(base * 0.25 * config.target)


def test_a_pause_only_gets_longer_and_is_per_model() -> None:
    clock = ManualClock()
    lim = answered(MemoryLimiter(CONFIG, clock=clock))
    lim.pause("m", 30)
    clock.sleep(10)
    lim.pause("m", 5)  # ends before the pause in force
    assert lim.acquire("m", **ASK) == Wait(20.0, "paused (429)")
    assert lim.snapshot("m")["paused_for_s"] == 20.0
    assert isinstance(lim.acquire("r", **ASK), Grant)
    clock.sleep(20)
    assert isinstance(lim.acquire("m", **ASK), Grant)
    lim.pause("m", 0)  # allowed: changes nothing now
    assert isinstance(lim.acquire("m", **ASK), Grant)


def test_queues_are_paused_and_resumed() -> None:
    lim = MemoryLimiter(CONFIG, clock=ManualClock())
    assert lim.paused_queues() == set()
    lim.pause_queue("haiku-simple")
    lim.pause_queue("batch")
    lim.pause_queue("batch")
    lim.resume_queue("batch")
    lim.resume_queue("never-paused")
    paused = lim.paused_queues()
    assert paused == {"haiku-simple"}
    paused.add("mine")  # a copy: the caller cannot change the limiter's set
    assert lim.paused_queues() == {"haiku-simple"}


def test_release_of_an_unlimited_grant_or_a_released_one_changes_nothing() -> None:
    clock = ManualClock()
    lim = MemoryLimiter(CONFIG, clock=clock)
    lim.observe("free", {})  # answered without rate-limit headers: no limits, no discovery
    free = lim.acquire("free", **ASK)
    assert free == Grant("free", "", "t", 10, 100)  # nothing charged, nothing to release
    lim.observe("free", {"anthropic-ratelimit-requests-limit": "10"})  # limited from now on
    state = lim.read_state("free")[0]
    lim.release(free, input_tokens=10_000, output_tokens=10_000)
    assert lim.read_state("free")[0] == state and not state.inflight
    grant = lim.acquire("m", **ASK)
    assert isinstance(grant, Grant) and grant.grant_id
    lim.release(grant, output_tokens=0)
    released = lim.read_state("m")[0]
    assert released.levels["otpm"] == pytest.approx(limits.effective(
        CONFIG, "m", released, clock()).size("otpm"))  # the reservation came back, once
    clock.sleep(1)
    lim.release(grant, output_tokens=0)
    assert lim.read_state("m")[0] == released


def test_negative_usage_counts_as_zero() -> None:
    """release runs in cleanup paths: bad figures refund the reservation, never more."""
    clock = ManualClock()
    lim = answered(MemoryLimiter(CONFIG, clock=clock))
    ask = {**ASK, "input_tokens": 500, "output_tokens": 500}
    first, second = lim.acquire("m", **ask), lim.acquire("m", **ask)
    assert isinstance(first, Grant) and isinstance(second, Grant)
    lim.release(first, input_tokens=-500, output_tokens=-500)
    state = lim.read_state("m")[0]
    eff = limits.effective(CONFIG, "m", state, clock())
    assert state.levels["itpm"] == pytest.approx(eff.size("itpm") - 500)  # the second's only
    assert state.levels["otpm"] == pytest.approx(eff.size("otpm") - 500)


def test_models_are_the_configured_and_the_followed_ones() -> None:
    """As the Redis limiter's: asking for capacity does not list a model; an answer (with
    headers or not), a pause or a throttle do."""
    lim = MemoryLimiter(CONFIG, clock=ManualClock())
    grant = lim.acquire("free", **ASK)
    lim.release(grant, input_tokens=1)
    lim.release(Grant("gone", "g1", "t", 1, 1), input_tokens=1)
    assert lim.models() == sorted(CONFIG.models)
    lim.observe("junk", {"anthropic-ratelimit-requests-limit": "many", "x": "1"})
    assert lim.read_state("junk")[0].observed == {}  # garbage is ignored, the answer is not
    lim.observe("seen", {"anthropic-ratelimit-requests-remaining": "0"})
    lim.pause("paused", 1)
    lim.throttle("slow", None)
    assert lim.models() == sorted({*CONFIG.models, "junk", "seen", "paused", "slow"})


def test_grant_ids_come_from_new_id() -> None:
    ids = iter(["first", "second"])
    lim = answered(MemoryLimiter(CONFIG, clock=ManualClock(), new_id=lambda: next(ids)))
    got = [lim.acquire("m", **ASK) for _ in range(2)]
    assert [g.grant_id for g in got if isinstance(g, Grant)] == ["first", "second"]
    assert set(lim.read_state("m")[0].inflight) == {"first", "second"}


def test_breaker_reset_and_state_are_per_model() -> None:
    clock = ManualClock()
    config = BreakerConfig()
    breaker = MemoryBreaker(config, clock=clock)
    for _ in range(config.consecutive_failures):
        breaker.record("a", success=False, probe=False)
    breaker.record("b", success=False, probe=False)
    clock.sleep(1)
    state = breaker.state("a")
    assert state["state"] == "open" and state["cooldown_remaining_s"] == config.cooldown_s - 1
    decision = breaker.allow("a")
    assert decision.admission is Admission.REJECT
    assert decision.retry_in_s == config.cooldown_s - 1
    breaker.reset("a")
    assert breaker.allow("a").admission is Admission.ALLOW
    assert breaker.value("a")[0] == BreakerValue()
    assert breaker.state("b")["failures_in_row"] == 1  # untouched
    breaker.reset("never-seen")


def test_the_manual_clock_moves_only_forward_when_told() -> None:
    clock = ManualClock(5.0)
    assert clock() == 5.0
    clock.sleep(2.5)
    clock.sleep(-10)
    assert clock() == 7.5
    # a real sleep always lets time pass, however short: so does this one, even by less
    # than the float resolution of now (else a waiter short by 1e-11 s would loop forever)
    clock = ManualClock(1_000_000.0)
    clock.sleep(1e-12)
    assert clock() == math.nextafter(1_000_000.0, math.inf)
