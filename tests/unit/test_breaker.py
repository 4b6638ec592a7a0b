"""The breaker's pure arithmetic: every transition of ``farm.capacity.circuit.transition``."""

from __future__ import annotations

import pytest

from farm.capacity.breaker import parse
from farm.capacity.circuit import (
    Admission,
    BreakerConfig,
    BreakerDecision,
    BreakerState,
    BreakerValue,
    Event,
    bucket_of,
    cooldown_s,
    counts_as_failure,
    report,
    transition,
    window_totals,
)
from farm.provider.errors import ErrorKind

CFG = BreakerConfig()  # 5 in a row, 30 s window, 50 % of >= 20 calls, 15 s .. 120 s, 1 probe
T0 = 1_000_000.0
CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def run(value: BreakerValue, *events: tuple[Event, float], config: BreakerConfig = CFG,
        probe: bool = False) -> BreakerValue:
    for event, now in events:
        value, _ = transition(value, event, now, config, probe=probe)
    return value


def allow(value: BreakerValue, now: float, config: BreakerConfig = CFG
          ) -> tuple[BreakerValue, BreakerDecision]:
    value, decision = transition(value, Event.ALLOW, now, config)
    assert decision is not None
    return value, decision


def opened(at: float = T0, reopens: int = 0) -> BreakerValue:
    return BreakerValue(state=OPEN, opened_at=at, reopens=reopens)


def test_which_errors_count() -> None:
    counted = {k for k in ErrorKind if counts_as_failure(k)}
    assert counted == {ErrorKind.OVERLOADED, ErrorKind.SERVER, ErrorKind.TIMEOUT,
                       ErrorKind.CONNECTION}
    assert not counts_as_failure(ErrorKind.RATE_LIMITED)
    assert not counts_as_failure(ErrorKind.BAD_REQUEST)


def test_config_validation() -> None:
    assert (CFG.consecutive_failures, CFG.window_s, CFG.failure_ratio, CFG.min_calls) == (
        5, 30.0, 0.5, 20)
    assert (CFG.cooldown_s, CFG.max_cooldown_s, CFG.probes, CFG.probe_ttl_s) == (
        15.0, 120.0, 1, 150.0)
    with pytest.raises(ValueError):
        BreakerConfig(cooldown_s=30, max_cooldown_s=10)
    with pytest.raises(ValueError):
        BreakerConfig(probes=0)
    with pytest.raises(ValueError):
        BreakerConfig(failure_ratio=1.5)
    with pytest.raises(ValueError):
        CFG.probes = 2  # type: ignore[misc]


def test_closed_allows_and_changes_nothing() -> None:
    value = BreakerValue(failures_in_row=3, window=((bucket_of(T0, CFG), 4, 3),))
    after, decision = allow(value, T0)
    assert after == value and decision == BreakerDecision(Admission.ALLOW, 0.0, CLOSED)


def test_consecutive_failures_open_it() -> None:
    value = run(BreakerValue(), *[(Event.FAILURE, T0 + i) for i in range(4)])
    assert value.state is CLOSED and value.failures_in_row == 4
    assert run(value, (Event.FAILURE, T0 + 4)) == opened(T0 + 4)


def test_a_success_breaks_the_run() -> None:
    value = run(BreakerValue(), *[(Event.FAILURE, T0)] * 4, (Event.SUCCESS, T0),
                *[(Event.FAILURE, T0)] * 4)
    assert value.state is CLOSED and value.failures_in_row == 4
    assert window_totals(value, T0, CFG) == (9, 8)


def test_failure_ratio_opens_it_once_there_are_enough_calls() -> None:
    # alternate success/failure: never 5 in a row, 50 % failures
    events = [(Event.SUCCESS if i % 2 else Event.FAILURE, T0 + i / 10) for i in range(19)]
    value = run(BreakerValue(), *events)
    assert value.state is CLOSED and window_totals(value, T0 + 2, CFG) == (19, 10)
    assert run(value, (Event.SUCCESS, T0 + 2)).state is CLOSED  # a success never opens it
    assert run(value, (Event.FAILURE, T0 + 2)) == opened(T0 + 2)  # 11 of 20 calls failed


def test_ratio_below_threshold_or_too_few_calls_keeps_it_closed() -> None:
    config = BreakerConfig(consecutive_failures=50, min_calls=10, failure_ratio=0.5)
    value = run(BreakerValue(), *[(Event.FAILURE, T0)] * 9, config=config)
    assert value.state is CLOSED  # 9 failures of 9 calls: too few calls
    value = run(BreakerValue(), *[(Event.SUCCESS, T0)] * 11, *[(Event.FAILURE, T0)] * 10,
                config=config)
    assert value.state is CLOSED  # 10 of 21 < 0.5
    assert run(value, (Event.FAILURE, T0), config=config).state is OPEN  # 11 of 22


def test_the_window_slides() -> None:
    config = BreakerConfig(consecutive_failures=50, min_calls=4)
    value = run(BreakerValue(), *[(Event.FAILURE, T0)] * 3, config=config)
    # 3 s buckets: 30 s later the old failures have left the window
    late = T0 + 33
    value = run(value, (Event.SUCCESS, late), config=config)
    assert window_totals(value, late, config) == (1, 0)
    assert value.window == ((bucket_of(late, config), 1, 0),)  # stale buckets pruned
    assert window_totals(BreakerValue(window=((bucket_of(T0, config), 5, 5),)), late,
                        config) == (0, 0)
    # within the window they still count
    value = run(BreakerValue(), *[(Event.FAILURE, T0)] * 3, (Event.FAILURE, T0 + 20),
                config=config)
    assert value.state is OPEN


def test_open_rejects_until_the_cooldown_is_over() -> None:
    value, decision = allow(opened(), T0 + 5)
    assert value == opened() and decision == BreakerDecision(Admission.REJECT, 10.0, OPEN)
    value, decision = allow(opened(reopens=2), T0 + 5)
    assert decision.retry_in_s == 60.0 - 5  # 15 * 2 ** 2


def test_results_while_open_are_ignored() -> None:
    for event in (Event.SUCCESS, Event.FAILURE):
        for probe in (False, True):
            assert run(opened(), (event, T0 + 100), probe=probe) == opened()


def test_after_the_cooldown_one_probe_then_reject() -> None:
    value, decision = allow(opened(), T0 + 15)
    assert decision == BreakerDecision(Admission.PROBE, 0.0, HALF)
    assert value.state is HALF and value.probe_leases == (T0 + 15 + 150,)
    value, decision = allow(value, T0 + 16)
    assert decision == BreakerDecision(Admission.REJECT, 15.0, HALF)  # capped at the base cooldown
    assert value.probe_leases == (T0 + 165,)


def test_several_probe_slots() -> None:
    config = BreakerConfig(probes=3)
    value = opened()
    admissions = []
    for i in range(5):
        value, decision = allow(value, T0 + 20 + i, config)
        admissions.append(decision.admission)
    assert admissions == [Admission.PROBE] * 3 + [Admission.REJECT] * 2
    assert len(value.probe_leases) == 3


def test_a_dead_probe_frees_its_slot_after_the_ttl() -> None:
    value, _ = allow(opened(), T0 + 15)
    value, decision = allow(value, T0 + 15 + 149)
    assert decision.admission is Admission.REJECT and decision.retry_in_s == pytest.approx(1.0)
    value, decision = allow(value, T0 + 15 + 150)
    assert decision.admission is Admission.PROBE
    assert value.probe_leases == (T0 + 15 + 300,)


def test_probe_success_closes_and_resets() -> None:
    value, _ = allow(opened(reopens=3), T0 + 200)
    assert run(value, (Event.SUCCESS, T0 + 201), probe=True) == BreakerValue()


def test_probe_failure_reopens_with_the_cooldown_doubled_and_capped() -> None:
    value, now = opened(), T0
    cooldowns = []
    for _ in range(6):
        cooldowns.append(cooldown_s(value, CFG))
        now += cooldown_s(value, CFG)
        value, decision = allow(value, now)
        assert decision.admission is Admission.PROBE
        value = run(value, (Event.FAILURE, now + 1), probe=True)
        assert value.state is OPEN and value.opened_at == now + 1 and not value.probe_leases
        now += 1
    assert cooldowns == [15, 30, 60, 120, 120, 120]
    assert run(BreakerValue(state=HALF, reopens=30), (Event.FAILURE, T0), probe=True).reopens == 30


def test_non_probe_results_while_half_open_are_ignored() -> None:
    value, _ = allow(opened(), T0 + 15)
    for event in (Event.SUCCESS, Event.FAILURE):
        assert run(value, (event, T0 + 16)) == value


def test_probe_result_when_closed_counts_as_a_normal_call() -> None:
    value = run(BreakerValue(), (Event.FAILURE, T0), probe=True)
    assert value.state is CLOSED and value.failures_in_row == 1


def test_after_closing_the_cooldown_is_back_to_base() -> None:
    value, _ = allow(opened(reopens=2), T0 + 60)
    value = run(value, (Event.SUCCESS, T0 + 61), probe=True)
    value = run(value, *[(Event.FAILURE, T0 + 62)] * 5)
    assert value == opened(T0 + 62) and cooldown_s(value, CFG) == 15


def test_parse_reads_the_redis_hash() -> None:
    assert parse({}) == BreakerValue()
    raw = {b"state": b"half_open", b"row": b"0", b"opened_at": b"1000.5", b"reopens": b"2",
           b"c:7": b"4", b"f:7": b"3", b"c:5": b"1", b"p:1": b"1200.25", b"pseq": b"1"}
    assert parse(raw) == BreakerValue(state=HALF, window=((5, 1, 0), (7, 4, 3)),
                                      opened_at=1000.5, reopens=2, probe_leases=(1200.25,))
    assert parse({"state": "open", "opened_at": "5"}) == opened(5.0)


def test_report() -> None:
    shown = report("m", opened(reopens=1), T0 + 10, CFG)
    assert shown["state"] == "open" and shown["opened_at"] == T0
    assert shown["cooldown_s"] == 30 and shown["cooldown_remaining_s"] == 20
    closed = BreakerValue(failures_in_row=2, window=((bucket_of(T0, CFG), 6, 2),))
    assert report("m", closed, T0, CFG) == {
        "model": "m", "state": "closed", "failures_in_row": 2, "window_calls": 6,
        "window_failures": 2, "opened_at": None, "cooldown_s": 15.0,
        "cooldown_remaining_s": 0.0, "probes_in_flight": 0}
    half, _ = allow(opened(), T0 + 15)
    assert report("m", half, T0 + 16, CFG)["probes_in_flight"] == 1
