"""The limiter's arithmetic (farm.capacity.limits), no services: the Lua script is checked against
these same functions in tests/integration/test_limiter.py."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from farm.capacity import limits
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.fairness import (
    STARVE_GRACE_S,
    Starved,
    TenantUsage,
    decayed,
    over_share,
    starve,
)
from farm.capacity.headers import parse_headers
from farm.capacity.limits import Grant, ModelState, Wait
from farm.jobs import Priority

T0 = 1000.0


def lc(**kwargs: Any) -> LimiterConfig:
    """Buckets of a whole minute and no discovery (pacing and discovery are tested in
    tests/unit/test_pacing.py)."""
    return LimiterConfig(**{"burst_s": 60, "discovery_slots": 0, **kwargs})


def cfg(max_delay_s: float = 0.0, **caps: int | None) -> LimiterConfig:
    """Without scheduling ahead (max_delay_s=0) unless a test asks for it; buckets of a whole
    minute and no discovery (pacing and discovery: tests/unit/test_pacing.py)."""
    return LimiterConfig(models={"m": ModelLimits(**caps)}, max_delay_s=max_delay_s,
                         burst_s=60, discovery_slots=0)


def ask(config: LimiterConfig, state: ModelState, now: float = T0, *, model: str = "m",
        tokens: tuple[int, int] = (0, 0), priority: Priority = Priority.HIGH,
        tenant: str = "t", waited_s: float = 0.0, grant_id: str = "g"
        ) -> tuple[Grant | Wait, ModelState]:
    return limits.acquire(config, model, state, now, input_tokens=tokens[0],
                         output_tokens=tokens[1], priority=priority, tenant=tenant,
                         waited_s=waited_s, grant_id=grant_id)


def drain(config: LimiterConfig, state: ModelState, n: int, now: float = T0,
          **kw: Any) -> ModelState:
    for i in range(n):
        got, state = ask(config, state, now, grant_id=f"d{i}", **kw)
        assert isinstance(got, Grant), (i, got)
    return state


# --- configuration ------------------------------------------------------------------

def test_defaults() -> None:
    c = LimiterConfig()
    assert (c.target, c.max_wait_s, c.tenant_window_s, c.grant_ttl_s) == (0.98, 120, 60, 180)
    assert c.reserve == {Priority.HIGH: 0.0, Priority.NORMAL: 0.05, Priority.LOW: 0.20}
    assert c.concurrency_share == {Priority.HIGH: 1.0, Priority.NORMAL: 0.95,
                                   Priority.LOW: 0.80}
    assert c.limits_for("anything") == ModelLimits()
    c = LimiterConfig.model_validate({"reserve": {"low": 0.3}, "concurrency_share": {}})
    assert c.reserve == {Priority.HIGH: 0.0, Priority.NORMAL: 0.05, Priority.LOW: 0.3}
    with pytest.raises(ValidationError):
        c.target = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"target": 0}, "target"), ({"target": 1.01}, "target"), ({"reserve": {"high": -0.1}},
    "reserve"), ({"reserve": {"low": 1.0}}, "reserve"), ({"reserve": {"urgent": 0.1}},
    "reserve"), ({"reserve": {"normal": 0.5, "low": 0.1}}, "shrink"),
    ({"concurrency_share": {"low": 0}}, "concurrency_share"), ({"concurrency_share": {
        "high": 1.5}}, "concurrency_share"), ({"concurrency_share": {"high": 0.5}}, "grow"),
    ({"max_wait_s": 0}, "max_wait_s"), ({"tenant_window_s": -1}, "tenant_window_s"),
    ({"grant_ttl_s": 0}, "grant_ttl_s"), ({"max_wait_s": math.inf}, "finite"),
    ({"models": {"": {}}}, "non-blank"), ({"models": {"m": {"rpm": -5}}}, "rpm"),
    ({"models": {"m": {"itpm": 0}}}, "itpm"), ({"models": {"m": {"otpm": -1}}}, "otpm"),
    ({"models": {"m": {"max_concurrency": 0}}}, "max_concurrency"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_config_names_the_problem(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ValidationError, match=names):
        LimiterConfig.model_validate(kwargs)


@pytest.mark.parametrize("bad", [0, 0.5, 100.5, -3, math.nan, "50"])
def test_throttle_percent_range(bad: Any) -> None:
    with pytest.raises(ValueError, match="between 1 and 100"):
        limits.check_percent(bad)


# --- buckets ------------------------------------------------------------------------

def test_a_fresh_bucket_is_full_and_a_grant_costs_request_input_and_output() -> None:
    c = cfg(rpm=100, itpm=10_000, otpm=5_000)
    eff = limits.effective(c, "m", ModelState(), T0)
    assert eff.caps == pytest.approx({"rpm": 98, "itpm": 9800, "otpm": 4900})
    assert eff.concurrency is None and limits.effective(c, "other", ModelState(), T0).unlimited
    got, state = ask(c, ModelState(), tokens=(300, 1000), grant_id="x")
    assert got == Grant("m", "x", "t", 300, 1000)
    assert state.levels == pytest.approx({"rpm": 97, "itpm": 9500, "otpm": 3900})
    assert state.updated == T0 and state.inflight == {"x": ("t", T0 + 180)}
    assert state.usage == {"t": TenantUsage(1.0, T0)} and state.active == {"t": T0}


def test_refill_is_limit_per_60_s_and_caps_at_capacity() -> None:
    c = cfg(rpm=60)  # capacity 58.8, 0.98 per second
    state = drain(c, ModelState(), 58)
    assert state.levels["rpm"] == pytest.approx(0.8)
    got, _ = ask(c, state, T0)
    assert got == Wait(pytest.approx(0.2 / 0.98), "rpm")
    got, later = ask(c, state, T0 + 0.3)
    assert isinstance(got, Grant)
    assert later.levels["rpm"] == pytest.approx(0.8 + 0.3 * 0.98 - 1)
    _, full = ask(c, state, T0 + 3600)
    assert full.levels["rpm"] == pytest.approx(58.8 - 1)  # capped, then charged


@pytest.mark.parametrize(("caps", "tokens", "reason"), [
    ({"rpm": 1}, (0, 0), "rpm"), ({"rpm": 1000, "itpm": 1000}, (900, 0), "itpm"),
    ({"rpm": 1000, "itpm": 100_000, "otpm": 1000}, (10, 900), "otpm")])
def test_each_limit_binds(caps: dict[str, int], tokens: tuple[int, int], reason: str) -> None:
    c = cfg(**caps)
    _, state = ask(c, ModelState(), tokens=tokens)
    got, again = ask(c, state, tokens=tokens)
    assert isinstance(got, Wait) and got.reason == reason and got.wait_s > 0
    assert again.levels == state.levels  # a wait charges nothing


def test_the_longest_wait_names_the_limit() -> None:
    c = cfg(rpm=60, otpm=6000)  # rates 0.98/s and 98/s
    state = ModelState(levels={"rpm": 0.5, "otpm": 0.0}, updated=T0)
    got, _ = ask(c, state, tokens=(0, 490))
    assert got == Wait(pytest.approx(490 / 98), "otpm")
    got, _ = ask(c, state, tokens=(0, 10))
    assert got == Wait(pytest.approx(0.5 / 0.98), "rpm")


def test_a_request_larger_than_the_bucket_passes_when_full_and_the_level_floors() -> None:
    c = cfg(otpm=1000)  # capacity 980
    got, state = ask(c, ModelState(), tokens=(0, 5000))
    assert isinstance(got, Grant) and state.levels["otpm"] == pytest.approx(-980)
    got, _ = ask(c, state, T0 + 60, tokens=(0, 5000))
    assert got == Wait(pytest.approx(60.0), "otpm")  # from -980 back to full takes 120 s
    # even LOW: the cost is capped at capacity - reserve
    assert isinstance(ask(c, state, T0 + 121, tokens=(0, 5000), priority=Priority.LOW)[0], Grant)


def test_a_model_without_limits_is_free_and_only_counted() -> None:
    got, state = ask(lc(), ModelState(), model="free", tokens=(10**6, 10**6))
    assert isinstance(got, Grant) and got.grant_id == "" and got.delay_s == 0
    # nothing charged, no slot, no tenant: only its rate is counted (for a throttle)
    assert state == replace(ModelState(), rate=TenantUsage(1.0, T0))


# --- priorities ---------------------------------------------------------------------

@pytest.mark.parametrize(("priority", "reserve"), [
    (Priority.HIGH, 0.0), (Priority.NORMAL, 0.05), (Priority.LOW, 0.20)])
def test_reserve_boundary(priority: Priority, reserve: float) -> None:
    c = cfg(rpm=1000)  # capacity 980
    exact = ModelState(levels={"rpm": 1 + reserve * 980}, updated=T0)
    assert isinstance(ask(c, exact, priority=priority)[0], Grant)
    short = replace(exact, levels={"rpm": 1 + reserve * 980 - 0.01})
    got, _ = ask(c, short, priority=priority)
    assert got == Wait(pytest.approx(0.01 / (980 / 60)), "rpm")


def test_low_leaves_a_reserve_that_high_can_use() -> None:
    c = cfg(rpm=100)  # capacity 98
    state, granted = ModelState(), {p: 0 for p in Priority}
    for i in range(300):
        p = list(Priority)[i % 3]
        got, state = ask(c, state, priority=p, grant_id=str(i))
        granted[p] += isinstance(got, Grant)
    assert granted[Priority.LOW] < granted[Priority.NORMAL] < granted[Priority.HIGH]
    assert sum(granted.values()) == 98


def test_long_wait_promotes_to_high() -> None:
    c = lc(models={"m": ModelLimits(rpm=100)}, max_wait_s=60)
    assert limits.promote(c, Priority.LOW, 59.9) is Priority.LOW
    assert limits.promote(c, Priority.LOW, 60) is Priority.HIGH
    state = ModelState(levels={"rpm": 5.0}, updated=T0)  # under LOW's reserve of 19.6
    assert isinstance(ask(c, state, priority=Priority.LOW)[0], Wait)
    assert isinstance(ask(c, state, priority=Priority.LOW, waited_s=61)[0], Grant)


# --- tenants ------------------------------------------------------------------------

def test_decayed_counter_settles_at_rate_times_half_life_over_ln2() -> None:
    half, rate, usage = 30.0, 2.0, None
    for i in range(1, 2001):  # 2 requests/s for 1000 s
        now = i / rate
        usage = TenantUsage(decayed(usage, now, half) + 1, now)
    assert usage is not None and usage.count == pytest.approx(rate * half / limits.LN2, rel=0.02)
    assert decayed(usage, usage.updated + half, half) == pytest.approx(usage.count / 2)


def test_a_starved_tenant_makes_one_with_more_grants_yield() -> None:
    c = cfg(rpm=600)  # 588 a minute, 9.8 a second; H = 30 s
    # "small" (4 recent grants) was told to wait until T0 + 2: "big" is over its share above
    # 1.25 * 4 + 1 = 6
    starved = Starved("small", 4.0, T0, T0 + 2)
    state = ModelState(usage={"big": TenantUsage(6.5, T0), "small": TenantUsage(4, T0)},
                       starved=starved, levels={"rpm": 1 + 0.25 * 588}, updated=T0)
    assert over_share(c, starved, state.usage, T0, "big")
    assert not over_share(c, starved, state.usage, T0, "small")  # not of itself
    assert not over_share(c, starved, {"big": TenantUsage(5.9, T0)}, T0, "big")
    assert not over_share(c, starved, state.usage, T0 + 2, "big")  # its wait is over
    # over its share, big takes a token only from a full bucket, whatever its priority
    for priority in Priority:
        got, after = ask(c, state, tenant="big", priority=priority)
        assert got == Wait(pytest.approx((588 - (1 + 0.25 * 588)) / 9.8), "rpm",
                           over_share=True)
        assert after.starved == starved  # a yielding tenant is not starved itself
    full = replace(state, levels={"rpm": 588.0})
    assert isinstance(ask(c, full, tenant="big", priority=Priority.LOW)[0], Grant)
    # small's grant ends its record; a third tenant with no grants is not over
    got, after = ask(c, state, tenant="small")
    assert isinstance(got, Grant) and after.starved is None
    assert isinstance(ask(c, state, tenant="new")[0], Grant)


def test_the_starved_record_keeps_the_tenant_with_fewest_grants() -> None:
    c = cfg(rpm=60)  # 58.8 a minute, 0.98 a second
    usage = {"a": TenantUsage(10, T0), "b": TenantUsage(3, T0)}
    state = ModelState(usage=usage, levels={"rpm": 0.0}, updated=T0)
    got, state = ask(c, state, tenant="a")
    assert isinstance(got, Wait) and not got.over_share
    assert state.starved == Starved("a", 10, T0, T0 + got.wait_s + STARVE_GRACE_S)
    # b has fewer grants: it takes the record (and a, more than 1.25 * 3 + 1, is over)
    got, state = ask(c, state, T0 + 0.1, tenant="b")
    assert isinstance(got, Wait) and state.starved is not None
    assert state.starved.tenant == "b"
    got, same = ask(c, state, T0 + 0.2, tenant="a")
    assert isinstance(got, Wait) and got.over_share and same.starved == state.starved
    # once b's wait is over, a is not over its share any more
    got, _ = ask(c, state, state.starved.until, tenant="a")
    assert isinstance(got, Grant)
    assert starve(c, None, usage, T0, "x", 1.0) == Starved("x", 0.0, T0, T0 + 2.0)


def test_tenants_count_as_active_within_the_window_only() -> None:
    c = cfg(max_concurrency=4)
    state = ModelState(active={"old": T0 - 60, "recent": T0 - 59},
                       inflight={f"g{i}": ("t", T0 + 100) for i in range(2)})
    got, after = ask(c, state)  # t holds 2; active: t, recent -> t may hold 2
    assert got == Wait(0.25, "tenant-concurrency")
    assert set(after.active) == {"t", "recent"}
    got, _ = ask(c, state, T0 + 2)  # "recent" is gone too: t alone may use all slots
    assert isinstance(got, Grant)


@pytest.mark.parametrize("burst_s", [60.0, 5.0])
def test_one_tenant_cannot_block_another(burst_s: float) -> None:
    """10,000 jobs of A against 10 of B under a tight limit: each of B's is served within a
    few retries, although A never stops asking; with a minute's bucket and a paced one
    (where A never had a minute's burst to be over its share with)."""
    c = cfg(rpm=60, max_concurrency=4).model_copy(update={"burst_s": burst_s})
    state, granted, now, pending, tries = ModelState(), {"A": 0, "B": 0}, T0, 0, []
    b_next = 0.0  # B comes back when it was told to; A asks every 10 ms regardless
    for i in range(10_000):
        now += 0.01
        pending += i % 1000 == 500
        for tenant in ("A", "B") if pending and now >= b_next else ("A",):
            got, state = ask(c, state, now, tenant=tenant, priority=Priority.NORMAL,
                             grant_id=f"{tenant}{i}")
            if tenant == "B":
                tries.append(isinstance(got, Grant))
                b_next = now + (got.wait_s if isinstance(got, Wait) else 0.0)
            if isinstance(got, Grant):
                granted[tenant] += 1
                pending -= tenant == "B"
                _, state = limits.settle(c, state, now, got)
    assert granted["B"] == 10 and len(tries) <= 20
    assert granted["A"] + granted["B"] <= 58.8 + 0.98 * 100


# --- concurrency --------------------------------------------------------------------

@pytest.mark.parametrize(("priority", "slots"), [
    (Priority.HIGH, 10), (Priority.NORMAL, 9), (Priority.LOW, 8)])
def test_concurrency_share_per_priority(priority: Priority, slots: int) -> None:
    c = cfg(max_concurrency=10)
    state = drain(c, ModelState(), slots, priority=priority)
    assert len(state.inflight) == slots
    got, _ = ask(c, state, priority=priority)
    assert got == Wait(0.25, "concurrency")
    got, state = ask(cfg(max_concurrency=1), ModelState(), priority=priority)
    assert isinstance(got, Grant)  # a single slot still serves every priority


def test_slots_are_shared_by_active_tenants_and_dead_holders_expire() -> None:
    c = lc(models={"m": ModelLimits(max_concurrency=5)}, grant_ttl_s=100)
    state = drain(c, ModelState(), 3, tenant="A")
    _, state = ask(c, state, tenant="B", grant_id="b1")  # B active: A may hold ceil(5/2)=3
    got, state = ask(c, state, tenant="A")
    assert got == Wait(0.25, "tenant-concurrency")
    got, state = ask(c, state, tenant="B", grant_id="b2")
    assert isinstance(got, Grant)
    got, _ = ask(c, state, T0 + 100, tenant="A", grant_id="late")  # every grant expired
    assert isinstance(got, Grant)


def test_release_frees_the_slot_once() -> None:
    c = cfg(max_concurrency=1)
    got, state = ask(c, ModelState())
    assert isinstance(got, Grant)
    done, state = limits.settle(c, state, T0, got)
    assert done and state.inflight == {}
    again, same = limits.settle(c, state, T0, got)
    assert not again and same is state
    assert isinstance(ask(c, state)[0], Grant)
    c = cfg(otpm=10_000)  # without usage, release refunds nothing
    got, state = ask(c, ModelState(), tokens=(0, 4000))
    assert isinstance(got, Grant)
    done, after = limits.settle(c, state, T0 + 5, got)
    assert done and after.levels == state.levels and after.updated == T0


# --- limits.pause, throttle, observed limits -----------------------------------------------

def test_pause_waits_everyone_and_only_extends() -> None:
    state = limits.pause(lc(), ModelState(), T0, 30)
    state = limits.pause(lc(), state, T0 + 1, 5)
    assert state.paused_until == T0 + 30
    for model in ("m", "unconfigured"):
        got, _ = ask(cfg(rpm=10), state, T0 + 10, model=model)
        assert got == Wait(pytest.approx(20.0), "paused (429)")
    assert isinstance(ask(cfg(rpm=10), state, T0 + 30)[0], Grant)


def test_throttle_scales_rates_and_concurrency() -> None:
    c = cfg(rpm=100, max_concurrency=10)
    state = replace(ModelState(), throttle=limits.check_percent(50))
    eff = limits.effective(c, "m", state, T0)
    assert eff.caps["rpm"] == pytest.approx(49.0) and eff.concurrency == 5
    _, low = ask(c, state)
    assert low.levels["rpm"] == pytest.approx(48.0)
    assert limits.effective(c, "m", replace(state, throttle=1.0), T0).concurrency == 1
    unthrottled = limits.effective(c, "m", replace(state, throttle=None), T0)
    assert unthrottled.caps["rpm"] == pytest.approx(98)
    assert limits.check_percent(None) is None and limits.check_percent(100) is None  # both clear
    assert limits.check_percent(1) == 1.0 and limits.check_percent(37.5) == 37.5


def test_every_grant_counts_in_the_models_rate_which_settles_at_the_real_rate() -> None:
    c, state = lc(), ModelState()
    for i in range(600):  # 2 calls a second for 5 minutes, no limits
        _, state = ask(c, state, T0 + i / 2, model="free")
    assert limits.measured_rpm(c, state, T0 + 300) == pytest.approx(120, rel=0.01)
    limited = drain(cfg(rpm=1000), ModelState(), 10)
    assert limited.rate == TenantUsage(pytest.approx(10.0), T0)
    # a minute later it has decayed to a quarter (half-life: tenant_window_s / 2)
    assert limits.measured_rpm(c, state, T0 + 360) == pytest.approx(30, rel=0.01)


def test_a_throttle_of_a_model_without_limits_takes_its_percent_of_the_recent_rate() -> None:
    c, state = lc(max_delay_s=0), ModelState()
    for i in range(600):
        _, state = ask(c, state, T0 + i / 2, model="free")
    now = T0 + 300
    base, throttled = limits.throttle(c, "free", state, now, 10.0)
    assert base == pytest.approx(120, rel=0.01) and throttled.throttle == 10.0
    eff = limits.effective(c, "free", throttled, T0)
    assert eff.caps == {"rpm": pytest.approx(base * 0.10 * 0.98)} and not eff.unlimited
    # it acts: the bucket (capacity ~11.8) lets ~11 through, then the next one waits
    for i in range(11):
        got, throttled = ask(c, throttled, now, model="free", grant_id=f"g{i}")
        assert isinstance(got, Grant) and got.grant_id == f"g{i}"
    got, throttled = ask(c, throttled, now, model="free")
    assert isinstance(got, Wait) and got.reason == "rpm"
    # changing the percent keeps the base (the rate under the throttle would ratchet down)
    later = now + 600
    again, throttled = limits.throttle(c, "free", throttled, later, 1.0)
    assert again == base and limits.effective(c, "free", throttled, T0).caps["rpm"] == (
        pytest.approx(base * 0.01 * 0.98))
    # lifting it clears both: the model is free again
    lifted, free = limits.throttle(c, "free", throttled, later, None)
    assert lifted is None and free.throttle is None and free.throttle_base is None
    assert limits.effective(c, "free", free, T0).unlimited


def test_a_throttle_with_nothing_to_measure_is_refused_and_changes_nothing() -> None:
    c = lc()
    with pytest.raises(limits.NothingToThrottle, match="no limits") as err:
        limits.throttle(c, "free", ModelState(), T0, 1.0)
    assert err.value.measured_rpm == 0.0
    _, state = ask(c, ModelState(), model="free")  # one call, then ten idle minutes
    with pytest.raises(limits.NothingToThrottle):
        limits.throttle(c, "free", state, T0 + 600, 50.0)
    # a model with a request limit needs no base: its limit is what the percent is of
    base, state = limits.throttle(cfg(rpm=100), "m", ModelState(), T0, 50.0)
    assert base is None and state == replace(ModelState(), throttle=50.0)
    base, state = limits.throttle(c, "o", replace(ModelState(), observed={"rpm": 50}), T0, 5.0)
    assert base is None and limits.effective(c, "o", state, T0).caps["rpm"] == pytest.approx(2.45)
    # nor does one with only a token or a concurrency limit: the percent acts on that
    for only in ({"otpm": 1000}, {"max_concurrency": 4}):
        base, state = limits.throttle(cfg(**only), "m", ModelState(), T0, 50.0)
        assert base is None and not limits.effective(cfg(**only), "m", state, T0).unlimited


def test_parse_headers() -> None:
    seen = parse_headers({
        "Anthropic-RateLimit-Requests-Limit": "50", "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-input-tokens-limit": "junk",
        "anthropic-ratelimit-input-tokens-remaining": "12000",
        "anthropic-ratelimit-output-tokens-limit": "-5",
        "anthropic-ratelimit-tokens-limit": "999", "retry-after": "3"}, T0)
    assert seen.limits == {"rpm": 50}
    assert seen.remaining == {"rpm": 0, "itpm": 12000}
    assert parse_headers({}, T0).limits == {}


def test_observed_limits_replace_configured_ones() -> None:
    c = cfg(rpm=100)
    seen = parse_headers({"anthropic-ratelimit-requests-limit": "50",
                          "anthropic-ratelimit-output-tokens-limit": "8000"}, T0)
    state = limits.observe(c, "m", ModelState(), T0, seen)
    assert state.observed == {"rpm": 50, "otpm": 8000} and state.levels == {}
    assert limits.effective(c, "m", state, T0).caps == pytest.approx({"rpm": 49, "otpm": 7840})
    # an unconfigured model gets limits from the provider alone
    new = limits.observe(c, "new", ModelState(), T0, seen)
    assert limits.effective(c, "new", new, T0).caps["rpm"] == 49


def test_remaining_only_ever_lowers_the_level() -> None:
    c = cfg(rpm=1000, itpm=100_000)
    low = limits.observe(c, "m", ModelState(), T0, parse_headers({
        "anthropic-ratelimit-requests-remaining": "100",
        "anthropic-ratelimit-input-tokens-remaining": "200000",
        "anthropic-ratelimit-output-tokens-remaining": "0"}, T0))  # otpm: unlimited here
    assert low.levels == pytest.approx({"rpm": 98.0, "itpm": 98_000.0})
    same = limits.observe(c, "m", low, T0, parse_headers({
        "anthropic-ratelimit-requests-remaining": "900"}, T0))
    assert same.levels["rpm"] == pytest.approx(98.0)


# --- refunds ------------------------------------------------------------------------

def test_release_refunds_or_charges_the_difference_within_capacity() -> None:
    c = cfg(itpm=10_000, otpm=10_000)
    got, state = ask(c, ModelState(), tokens=(1000, 4000))
    assert isinstance(got, Grant)
    _, after = limits.settle(c, state, T0, got, output_tokens=1000)
    assert after.levels == pytest.approx({"itpm": 8800, "otpm": 8800})
    _, later = limits.settle(c, state, T0 + 60, got, input_tokens=1000, output_tokens=0)
    assert later.levels == pytest.approx({"itpm": 9800, "otpm": 9800})  # capped
    _, after = limits.settle(c, state, T0, got, input_tokens=3000)  # underestimated: charged
    assert after.levels["itpm"] == pytest.approx(9800 - 3000)
    _, floor = limits.settle(c, state, T0, got, input_tokens=10**9)
    assert floor.levels["itpm"] == pytest.approx(-9800)


# --- invariants and the snapshot ----------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_random_traffic_never_exceeds_the_buckets_or_the_slots(seed: int) -> None:
    rng = random.Random(seed)
    c = lc(models={"m": ModelLimits(rpm=120, otpm=20_000, max_concurrency=6)})
    state, now, held = ModelState(), T0, list[Grant]()
    granted, granted_out = 0, 0
    for i in range(3000):
        now += rng.choice([0.0, 0.01, 0.1, 0.5])
        if held and rng.random() < 0.4:
            _, state = limits.settle(c, state, now, held.pop(rng.randrange(len(held))))
        got, state = ask(c, state, now, tokens=(10, rng.randint(1, 3000)), grant_id=str(i),
                         tenant=rng.choice("abc"), priority=rng.choice(list(Priority)),
                         waited_s=rng.choice([0, 200]))
        if isinstance(got, Grant):
            held.append(got)
            granted, granted_out = granted + 1, granted_out + got.output_tokens
            assert len(held) <= 6
        # grants may be scheduled up to max_delay_s ahead: counted at grant time, the bound
        # moves that much earlier
        elapsed = now - T0 + c.max_delay_s
        assert granted <= 117.6 * (1 + elapsed / 60) + 1e-6
        assert granted_out <= 19_600 * (1 + elapsed / 60) + 1e-6
    assert granted > 300  # and the limits were used, not just respected


def test_describe() -> None:
    c = cfg(rpm=100, max_concurrency=4)
    _, state = ask(c, limits.pause(lc(), ModelState(), T0, 10), T0 + 11, tenant="a")
    snap = limits.describe(c, "m", replace(state, throttle=50.0), T0 + 11)
    assert snap["configured"] == {"rpm": 100, "itpm": None, "otpm": None,
                                  "max_concurrency": 4}
    assert snap["effective"] == {"rpm": pytest.approx(49), "itpm": None, "otpm": None,
                                 "max_concurrency": 2}
    assert snap["in_flight"] == 1 and snap["paused_for_s"] == 0.0
    assert snap["active_tenants"] == {"a": {"usage": 1.0, "in_flight": 1}}
    # the 429's pause halved the burst to 30 s; 11 s later it has grown back to 41 s
    assert snap["burst_s"] == pytest.approx(41.0)
    assert snap["bucket"] == {"rpm": pytest.approx(49 * 41 / 60)}
    assert snap["throttle_percent"] == 50.0
    assert snap["levels"]["rpm"] == pytest.approx(49 * 41 / 60)


def test_a_grant_is_scheduled_ahead_within_max_delay() -> None:
    c = cfg(rpm=60, max_delay_s=2.0)  # capacity 58.8, 0.98 per second
    state = drain(c, ModelState(), 58)  # 0.8 left
    got, state = ask(c, state, T0)  # needs 0.2 more: 0.204 s from now
    assert isinstance(got, Grant) and got.delay_s == pytest.approx(0.2 / 0.98)
    assert state.levels["rpm"] == pytest.approx(-0.2)  # in debt until then
    got, state = ask(c, state, T0)  # queued behind it: 1.2 tokens short
    assert isinstance(got, Grant) and got.delay_s == pytest.approx(1.2 / 0.98)
    got, state = ask(c, state, T0)  # 2.2 short: 2.24 s > 2 s ahead
    assert got == Wait(pytest.approx(2.2 / 0.98 - 2.0), "rpm")
    assert state.levels["rpm"] == pytest.approx(-1.2)  # a Wait takes nothing
    got, _ = ask(c, state, T0 + 1.0)  # a second later it fits again
    assert isinstance(got, Grant) and got.delay_s == pytest.approx(1.22 / 0.98)


def test_an_immediate_grant_has_no_delay() -> None:
    got, _ = ask(cfg(rpm=60, max_delay_s=2.0), ModelState(), T0)
    assert isinstance(got, Grant) and got.delay_s == 0.0


def test_scheduled_grants_never_exceed_the_rate() -> None:
    """However many ask, the grants' call times keep to the bucket: capacity + rate * t."""
    c = cfg(rpm=600, max_delay_s=2.0)
    state, calls, now = ModelState(), [], T0
    rng = random.Random(3)
    while now < T0 + 120:
        got, state = ask(c, state, now, priority=Priority.NORMAL)
        if isinstance(got, Grant):
            calls.append(now + got.delay_s)
        now += rng.uniform(0, 0.02)
    cap, rate = 600 * 0.98, 600 * 0.98 / 60
    for t in (T0 + 1, T0 + 30, T0 + 60, T0 + 119):
        assert sum(1 for x in calls if x <= t) <= cap + rate * (t - T0) + 1
    # and they use the limit: after the first minute's burst, the rate itself
    late = [x for x in calls if T0 + 60 <= x < T0 + 120]
    assert len(late) >= 0.97 * rate * 60
