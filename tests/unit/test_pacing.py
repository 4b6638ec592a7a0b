"""Pacing (farm.capacity.pacing, farm.capacity.headers and the paced buckets of
farm.capacity.limits), no services: buckets of a few seconds of the rate, the burst learned
from the provider's headers and 429s, discovery of a model whose limits are not known yet."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from pydantic import ValidationError

from farm.capacity import limits
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.headers import burst_seen, parse_headers
from farm.capacity.limits import Grant, ModelState, Wait
from farm.capacity.pacing import Burst, burst_now, halved, lowered
from farm.jobs import Priority
from farm.settings import Settings

T0 = 1_800_000_000.0
C = LimiterConfig(models={"m": ModelLimits(rpm=300)}, target=1.0)  # 5/s, a bucket of 25
HEARD = ModelState(answered=True)  # the provider has answered: the buckets hold their burst


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def ask(config: LimiterConfig, state: ModelState, now: float, *, model: str = "m",
        grant_id: str = "g", priority: Priority = Priority.HIGH, tenant: str = "t",
        tokens: tuple[int, int] = (0, 0)) -> tuple[Grant | Wait, ModelState]:
    return limits.acquire(config, model, state, now, input_tokens=tokens[0],
                          output_tokens=tokens[1], priority=priority, tenant=tenant,
                          grant_id=grant_id)


# --- configuration ------------------------------------------------------------------

def test_defaults_and_bad_values() -> None:
    c = LimiterConfig()
    assert (c.burst_s, c.min_burst_s, c.burst_probe_s, c.discovery_slots) == (5.0, 0.5, 60.0, 1)
    for bad, name in (({"burst_s": 0}, "burst_s"), ({"burst_s": 61}, "burst_s"),
                      ({"min_burst_s": 0}, "min_burst_s"), ({"burst_probe_s": 0},
                      "burst_probe_s"), ({"discovery_slots": -1}, "discovery_slots"),
                      ({"burst_s": 2, "min_burst_s": 3}, "must not exceed")):
        with pytest.raises(ValidationError, match=name):
            LimiterConfig.model_validate(bad)
    with pytest.raises(ValidationError, match=r"FARM_LIMIT_MIN_BURST_S \(3\) must not exceed"):
        Settings(limit_burst_s=2, limit_min_burst_s=3)


# --- the burst in force -------------------------------------------------------------

def test_a_learned_burst_grows_back_linearly_within_bounds() -> None:
    assert burst_now(C, None, T0) == 5.0
    learned = Burst(1.0, T0)
    # grows back burst_s (5) per burst_probe_s (60): 1 s + 12 s * 5/60 = 2 s
    assert burst_now(C, learned, T0 + 12) == pytest.approx(2.0)
    assert burst_now(C, learned, T0 + 60) == 5.0  # never above burst_s
    assert burst_now(C, Burst(0.1, T0), T0) == 0.5  # never below min_burst_s
    assert burst_now(C, learned, T0 - 5) == 1.0  # a clock that went back grows nothing


def test_headers_only_lower_the_burst_and_a_429_halves_it() -> None:
    assert lowered(C, None, T0, None) is None
    assert lowered(C, None, T0, 60.0) is None  # a full-minute provider: ours stays
    assert lowered(C, None, T0, 2.0) == Burst(2.0, T0)
    assert lowered(C, Burst(2.0, T0), T0 + 1, 3.0) == Burst(2.0, T0)  # never raised
    assert lowered(C, None, T0, 0.01) == Burst(0.5, T0)  # floored
    assert halved(C, None, T0) == Burst(2.5, T0)
    assert halved(C, Burst(2.5, T0), T0) == Burst(1.25, T0)
    assert halved(C, Burst(0.6, T0), T0) == Burst(0.5, T0)


def test_the_burst_is_read_from_remaining_and_reset() -> None:
    # 300/min with a 10 s bucket (capacity 50, 5/s): 20 left, full again in 6 s -> 10 s
    assert burst_seen(300, 20, T0 + 6, T0) == pytest.approx(10.0)
    assert burst_seen(300, 20, T0 - 1, T0) == 4.0  # a reset already past counts as now
    headers = {"anthropic-ratelimit-requests-limit": "300",
               "anthropic-ratelimit-requests-remaining": "20",
               "anthropic-ratelimit-requests-reset": iso(T0 + 6.5),
               "anthropic-ratelimit-output-tokens-limit": "80000",
               "anthropic-ratelimit-output-tokens-remaining": "79000"}
    seen = parse_headers(headers, T0)
    assert seen.limits == {"rpm": 300, "otpm": 80_000}
    assert seen.remaining == {"rpm": 20, "otpm": 79_000}
    assert seen.burst_s == pytest.approx(10.5)
    # a reset in whole seconds may have been rounded up: it counts as a second earlier
    whole = {**headers, "anthropic-ratelimit-requests-reset": iso(T0 + 7)}
    assert parse_headers(whole, T0).burst_s == pytest.approx(10.0)
    # a full-minute bucket, idle: all 300 left, full now -> 60 s
    assert parse_headers({**headers, "anthropic-ratelimit-requests-remaining": "300",
                          "anthropic-ratelimit-requests-reset": iso(T0)}, T0).burst_s == 60.0
    # no reset, or an unreadable or naive one: no burst (the limits still count)
    for reset in (None, "soon", "2026-12-01T04:31:06"):
        broken = {k: v for k, v in headers.items() if not k.endswith("requests-reset")}
        if reset is not None:
            broken["anthropic-ratelimit-requests-reset"] = reset
        got = parse_headers(broken, T0)
        assert got.burst_s is None and got.limits["rpm"] == 300


def test_the_providers_date_counts_only_when_the_clocks_disagree() -> None:
    headers = {"anthropic-ratelimit-requests-limit": "60",
               "anthropic-ratelimit-requests-remaining": "0",
               "anthropic-ratelimit-requests-reset": iso(T0 + 1.25)}
    date = {"date": format_datetime(datetime.fromtimestamp(T0, UTC), usegmt=True)}
    # our clock is 0.4 s past the provider's whole-second date: ours, finer, is used
    assert parse_headers({**headers, **date}, T0 + 0.4).burst_s == pytest.approx(0.85)
    # ours is 30 s ahead: the provider's date is used (else the burst would be 0)
    assert parse_headers({**headers, **date}, T0 + 30).burst_s == pytest.approx(1.25)
    assert parse_headers({**headers, "date": "garbage"}, T0 + 30).burst_s == 0.0


# --- paced buckets ------------------------------------------------------------------

def test_three_hundred_free_slots_get_a_paced_schedule_not_a_burst() -> None:
    """300 asks at once against 300/min: a bucket of 5 s (25) goes at once, then the grants
    are scheduled 0.2 s apart up to max_delay_s (2 s) ahead; the rest must wait."""
    state, delays = HEARD, []
    for i in range(300):
        got, state = ask(C, state, T0, grant_id=f"g{i}")
        if isinstance(got, Grant):
            delays.append(got.delay_s)
    assert len(delays) == 25 + 10  # the bucket, and 2 s of the rate scheduled ahead
    assert delays[:25] == [0.0] * 25
    assert delays[25:] == pytest.approx([0.2 * k for k in range(1, 11)])
    got, _ = ask(C, state, T0)
    assert got == Wait(pytest.approx(0.2), "rpm")


def test_a_pause_halves_the_bucket_once_per_episode() -> None:
    state = limits.pause(C, HEARD, T0, 2.0)
    assert state.burst == Burst(2.5, T0)
    again = limits.pause(C, state, T0 + 0.5, 1.0)  # the 429s of calls already on their way
    assert again.burst == Burst(2.5, T0) and again.paused_until == T0 + 2.0
    later = limits.pause(C, again, T0 + 3.0, 1.0)  # a new 429 after the pause ended
    assert later.burst == Burst(pytest.approx((2.5 + 3.0 * 5 / 60) / 2), T0 + 3.0)
    assert limits.effective(C, "m", later, T0 + 3.0).size("rpm") == pytest.approx(
        5 * (2.5 + 0.25) / 2)


def test_observe_lowers_the_burst_and_the_level() -> None:
    headers = {"anthropic-ratelimit-requests-limit": "300",
               "anthropic-ratelimit-requests-remaining": "2",
               "anthropic-ratelimit-requests-reset": iso(T0 + 0.625)}
    state = limits.observe(C, "m", ModelState(), T0, parse_headers(headers, T0))
    # 2/5 + 0.625 = 1.025 s of the rate: the bucket holds 5.125
    assert state.answered and state.burst == Burst(pytest.approx(1.025), T0)
    assert state.levels["rpm"] == pytest.approx(2.0)  # what the provider has left
    assert limits.effective(C, "m", state, T0).size("rpm") == pytest.approx(5.125)
    # refills at the rate up to the smaller size, which grows back over a minute
    assert limits.refill(limits.effective(C, "m", state, T0 + 1), state, T0 + 1) == {
        "rpm": pytest.approx(5 * (1.025 + 5 / 60))}


def test_a_request_larger_than_a_paced_bucket_goes_when_it_is_full() -> None:
    c = LimiterConfig(models={"m": ModelLimits(itpm=60_000)}, target=1.0, max_delay_s=0)
    # 1000 tokens/s, a bucket of 5000: a 20,000-token prompt goes when the bucket is full and
    # its whole cost is charged: the next one waits until the debt is repaid
    got, state = ask(c, HEARD, T0, tokens=(20_000, 0))
    assert isinstance(got, Grant) and state.levels["itpm"] == pytest.approx(-15_000)
    got, _ = ask(c, state, T0, tokens=(20_000, 0))
    assert got == Wait(pytest.approx(20.0), "itpm")


def test_priorities_keep_their_order_in_a_paced_bucket() -> None:
    """In debt, HIGH still schedules ahead, NORMAL a little less, LOW only above its reserve
    of the span (bucket + max_delay_s): level - cost >= -D + reserve * (size + D)."""
    rate, size, ahead = 5.0, 25.0, 10.0  # 300/min, 5 s, max_delay_s 2
    # after the grant: HIGH down to -10, NORMAL to -10 + 0.05 * 35, LOW to -10 + 0.2 * 35
    for level, allowed in ((-9.0, {"high"}), (-5.0, {"high", "normal"}),
                           (-3.5, {"high", "normal"}), (-2.0, {"high", "normal", "low"})):
        state = ModelState(levels={"rpm": level + 1}, updated=T0, answered=True)
        got = {p.value for p in Priority if isinstance(ask(C, state, T0, priority=p)[0], Grant)}
        assert got == allowed, (level, got)
    # the thresholds, exactly: after the grant the level keeps reserve * span above -D
    for p, reserve in C.reserve.items():
        need = 1 - ahead + reserve * (size + ahead)
        below = ModelState(levels={"rpm": need - 1e-6}, updated=T0, answered=True)
        got, _ = ask(C, below, T0, priority=p)
        assert got == Wait(pytest.approx(1e-6 / rate), "rpm")
        got, _ = ask(C, replace(below, levels={"rpm": need}), T0, priority=p)
        assert isinstance(got, Grant) and got.delay_s == pytest.approx(max(0, (1 - need) / rate))


# --- discovery ----------------------------------------------------------------------

def test_a_model_not_heard_from_starts_with_a_small_bucket() -> None:
    """Configured limits, no answer yet: the buckets hold min_burst_s (0.5 s: 2.5 calls), so
    300 free slots send 2 at once and the rest at the rate until the first answer tells
    the provider's burst; after it, the whole 5 s."""
    state, delays = ModelState(), []
    for i in range(300):
        got, state = ask(C, state, T0, grant_id=f"g{i}")
        if isinstance(got, Grant):
            delays.append(got.delay_s)
    assert delays == pytest.approx([0.0, 0.0, *(0.1 + 0.2 * k for k in range(10))])
    assert limits.effective(C, "m", state, T0).size("rpm") == 2.5
    heard = limits.observe(C, "m", state, T0, parse_headers({}, T0))
    assert limits.effective(C, "m", heard, T0).size("rpm") == 25.0
    off = C.model_copy(update={"discovery_slots": 0})  # no caution at all
    assert limits.effective(off, "m", ModelState(), T0).size("rpm") == 25.0


def test_a_model_with_unknown_limits_gets_one_call_until_its_first_answer() -> None:
    got, state = ask(C, ModelState(), T0, model="new", grant_id="first")
    assert isinstance(got, Grant) and got.grant_id == "first"  # held: to be released
    assert ask(C, state, T0, model="new")[0] == Wait(C.slot_wait_s, limits.DISCOVERY)
    # the answer's headers tell the limits: from now on the bucket paces it
    headers = {"anthropic-ratelimit-requests-limit": "300",
               "anthropic-ratelimit-requests-remaining": "299"}
    state = limits.observe(C, "new", state, T0 + 1, parse_headers(headers, T0 + 1))
    _, state = limits.settle(C, state, T0 + 1, got)
    assert limits.effective(C, "new", state, T0 + 1).caps == {"rpm": 300.0}
    got, _ = ask(C, state, T0 + 1, model="new", grant_id="second")
    assert isinstance(got, Grant)
    # an answer without headers: the model has no limits, every call is free
    answered = limits.observe(C, "bare", ModelState(), T0, parse_headers({}, T0))
    assert limits.effective(C, "bare", answered, T0).unlimited
    got, _ = ask(C, answered, T0, model="bare")
    assert isinstance(got, Grant) and got.grant_id == ""
    # configured limits, or discovery_slots=0: no discovery
    assert isinstance(ask(C, ModelState(), T0)[0], Grant)
    off = C.model_copy(update={"discovery_slots": 0})
    assert limits.effective(off, "new", ModelState(), T0).unlimited
