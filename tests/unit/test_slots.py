"""The elastic slots' policy (farm.pool.slots): a pure decision, checked case by case and
over a grid of every state it can meet."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from farm.pool.slots import Change, Sample, SlotPolicy, clamp, decide, parse_slots, utilisation
from farm.settings import QueueSpec, Settings

P = SlotPolicy(window_s=10, up_cooldown_s=5)  # 10-100, 80 %/20 %, +10/-5; 10 s; 5 s / 30 s


def busy(share: float, slots: int, since: float, until: float, every: float = 1.0
         ) -> list[Sample]:
    """One sample a second in [since, until] with ``share`` of ``slots`` busy."""
    count = round((until - since) / every) + 1
    return [Sample(since + i * every, round(share * slots), slots) for i in range(count)]


def test_the_issue_defaults() -> None:
    d = SlotPolicy()
    assert (d.min, d.max, d.up_at, d.down_at, d.step_up, d.step_down) == (10, 100, 0.8, 0.2,
                                                                           10, 5)
    # growth quick, shrinking patient: 10 -> 100 in 9 steps 2 s apart
    assert (d.window_s, d.up_cooldown_s, d.down_cooldown_s) == (4, 2, 30)


def test_busy_slots_grow_by_a_step_once_the_up_cooldown_has_passed() -> None:
    samples = busy(1.0, 10, 0, 5)
    assert decide(P, 10, samples, last_change_at=0, now=4.9) is None  # cool-down
    change = decide(P, 10, samples, last_change_at=0, now=5)
    assert change == Change(10, 20, 1.0, 5.0) and change.grew


def test_idle_slots_shrink_by_a_step_only_after_the_longer_down_cooldown() -> None:
    samples = busy(0.0, 50, 0, 30)
    assert decide(P, 50, samples, last_change_at=0, now=29) is None
    assert decide(P, 50, samples, last_change_at=0, now=30) == Change(50, 45, 0.0, 10.0)


def test_the_thresholds_are_strict_and_between_them_nothing_moves() -> None:
    at_up = busy(0.8, 50, 0, 40)
    at_down = busy(0.2, 50, 0, 40)
    assert decide(P, 50, at_up, 0, 40) is None  # 80 % is not above 80 %
    assert decide(P, 50, at_down, 0, 40) is None  # 20 % is not below 20 %
    assert decide(P, 50, busy(0.5, 50, 0, 40), 0, 40) is None
    assert decide(P, 50, busy(0.82, 50, 0, 40), 0, 40) == Change(50, 60, 0.82, 10.0)


def test_the_bounds_hold_and_the_last_step_is_cut_to_them() -> None:
    assert decide(P, 95, busy(1.0, 95, 0, 10), 0, 10) == Change(95, 100, 1.0, 10.0)
    assert decide(P, 100, busy(1.0, 100, 0, 10), 0, 10) is None
    assert decide(P, 12, busy(0.0, 12, 0, 40), 0, 40) == Change(12, 10, 0.0, 10.0)
    assert decide(P, 10, busy(0.0, 10, 0, 40), 0, 40) is None


def test_only_samples_in_the_window_and_since_the_last_change_count() -> None:
    # busy long ago, idle for the last window: the old samples do not hold the slots up
    history = busy(1.0, 50, 0, 30) + busy(0.0, 50, 31, 60)
    assert decide(P, 50, history, last_change_at=0, now=60) == Change(50, 45, 0.0, 10.0)
    # before the change the pool was saturated; since, idle: no growth from the old samples
    assert decide(P, 50, busy(1.0, 40, 0, 20) + busy(0.0, 50, 20, 26), 20, 26) is None
    assert utilisation(busy(1.0, 40, 0, 20)) == 1.0


def test_no_samples_no_change_and_a_pool_outside_new_bounds_comes_back_at_once() -> None:
    assert decide(P, 40, [], 0, 100) is None
    assert decide(P, 150, [], 0, 0.1) == Change(150, 100, 0.0, 0.1)
    assert decide(P, 4, [Sample(0, 4, 4)], 0, 0) == Change(4, 10, 1.0, 0.0)
    assert clamp(P, 0) == 10 and clamp(P, 1000) == 100


def test_busy_above_slots_counts_as_full_and_zero_slots_do_not_divide() -> None:
    assert utilisation([Sample(0, 15, 10), Sample(1, 5, 10)]) == 0.75
    assert utilisation([Sample(0, 1, 0)]) is None and utilisation([]) is None


@pytest.mark.parametrize("share", [0.0, 0.1, 0.2, 0.21, 0.5, 0.8, 0.81, 1.0])
def test_every_state_of_a_grid_moves_within_the_bounds_by_one_step_at_most(share: float
                                                                           ) -> None:
    policy = SlotPolicy(min=5, max=40, step_up=10, step_down=5, window_s=4, up_cooldown_s=2,
                        down_cooldown_s=6)
    for slots, last, now in itertools.product(range(5, 41), (0.0, 3.0, 5.0), (4.0, 8.0, 12.0)):
        if last > now:
            continue
        samples = busy(share, slots, 0, now)
        used = utilisation(samples)
        assert used is not None
        change = decide(policy, slots, samples, last, now)
        quiet = now - last
        if change is None:
            assert not (used > policy.up_at and slots < policy.max
                        and quiet >= policy.up_cooldown_s)
            assert not (used < policy.down_at and slots > policy.min
                        and quiet >= policy.down_cooldown_s)
            continue
        assert policy.min <= change.after <= policy.max and change.before == slots
        if change.grew:
            assert used > policy.up_at and quiet >= policy.up_cooldown_s
            assert change.after == min(policy.max, slots + policy.step_up)
        else:
            assert used < policy.down_at and quiet >= policy.down_cooldown_s
            assert change.after == max(policy.min, slots - policy.step_down)


def test_a_fixed_policy_never_moves() -> None:
    fixed = SlotPolicy.pinned(20)
    assert fixed.fixed and (fixed.min, fixed.max) == (20, 20)
    for share in (0.0, 1.0):
        assert decide(fixed, 20, busy(share, 20, 0, 100), 0, 100) is None


def test_a_policy_within_fewer_threads_is_cut_to_them() -> None:
    assert (P.within(8).min, P.within(8).max) == (8, 8)
    assert (P.within(50).min, P.within(50).max) == (10, 50)
    assert P.within(500) == P


@pytest.mark.parametrize(("raw", "problem"), [
    ('{"min": 20, "max": 10}', "min (20) must not exceed max (10)"),
    ('{"up_at": 0.5, "down_at": 0.5}', "down_at (0.5) must be below up_at (0.5)"),
    ('{"step_up": 0}', "greater than or equal to 1"),
    ('{"mni": 3}', "Extra inputs are not permitted"),
    ("elastic", 'slots must be "fixed" or a JSON object'),
    ("[1, 2]", 'slots must be "fixed" or an object'),
])
def test_bad_slots_are_refused_with_the_problem_named(raw: str, problem: str) -> None:
    with pytest.raises((ValueError, ValidationError), match=problem.replace("(", r"\(")
                       .replace(")", r"\)")):
        parse_slots(raw)


def test_farm_slots_and_a_queues_own_slots_resolve_per_worker() -> None:
    assert parse_slots(" Fixed ") is None and parse_slots('{"max": 50}') == SlotPolicy(max=50)
    queues = (QueueSpec(name="a", model="m", complexity="simple", slots="fixed"),
              QueueSpec(name="b", model="m", complexity="complex",
                        slots=SlotPolicy(min=2, max=30)),
              QueueSpec(name="c", model="m", complexity="simple"))
    settings = Settings(queues=queues, slots='{"max": 60}')  # type: ignore[arg-type]
    assert settings.slot_policy(["a"], 20) == SlotPolicy.pinned(20)
    assert settings.slot_policy(["b"], 100) == SlotPolicy(min=2, max=30)
    assert settings.slot_policy(["c", "farm-intake"], 100) == SlotPolicy(max=60)
    assert settings.slot_policy(["farm-intake"], 8) == SlotPolicy.pinned(8)
    with pytest.raises(ValueError, match="queues a, b have different slot policies"):
        settings.slot_policy(["a", "b"], 20)
    assert Settings(slots="fixed").slot_policy(["c"], 30) == SlotPolicy.pinned(30)  # type: ignore[arg-type]
