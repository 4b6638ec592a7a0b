"""The cost breaker's arithmetic, pure (farm.costs.spend_rate); its Lua twin is checked in
tests/integration/test_ledger.py."""

from __future__ import annotations

import pytest

from farm.costs import spend_rate as sr

W = 60.0


def test_a_fresh_window_starts_at_its_bucket() -> None:
    assert sr.roll(sr.SpendWindow(), 125.0, W) == sr.SpendWindow(120.0, 0, 0)


def test_buckets_move_back_then_drop_out() -> None:
    w = sr.add(sr.SpendWindow(), 125.0, W, 600)
    assert w == sr.SpendWindow(120.0, 600, 0)
    assert sr.roll(w, 179.9, W) == w
    assert sr.roll(w, 180.0, W) == sr.SpendWindow(180.0, 0, 600)
    assert sr.roll(w, 240.0, W) == sr.SpendWindow(240.0, 0, 0)  # two buckets on: nothing


@pytest.mark.parametrize(("now", "spent"), [(180.0, 600.0), (210.0, 300.0), (239.0, 10.0)])
def test_the_previous_bucket_counts_for_the_share_the_window_still_covers(
        now: float, spent: float) -> None:
    w = sr.roll(sr.SpendWindow(120.0, 600, 0), now, W)
    assert sr.spent(w, now, W) == pytest.approx(spent)
    assert sr.per_minute(w, now, W) == pytest.approx(spent)  # a 60 s window: per minute


def test_a_shorter_window_scales_to_a_minute() -> None:
    w = sr.add(sr.SpendWindow(), 10.0, 10.0, 100)
    assert sr.per_minute(w, 10.0, 10.0) == pytest.approx(600.0)


def test_steady_spend_reads_as_its_rate() -> None:
    w = sr.SpendWindow()
    for second in range(300):
        w = sr.add(w, float(second), W, 10)  # 10 a second: 600 a minute
    assert sr.per_minute(w, 299.0, W) == pytest.approx(600.0, rel=0.02)


@pytest.mark.parametrize(("rate", "is_open", "verdict"), [
    (99.0, False, sr.Verdict(True, False, False)),
    (100.0, False, sr.Verdict(False, True, True)),  # at the threshold it opens
    (99.0, True, sr.Verdict(False, True, False)),  # open until under close_share of it
    (50.0, True, sr.Verdict(False, True, False)),
    (49.9, True, sr.Verdict(True, False, True)),  # closes
])
def test_the_breaker_opens_at_the_threshold_and_closes_under_its_share(
        rate: float, is_open: bool, verdict: sr.Verdict) -> None:
    assert sr.check(rate, 100.0, 0.5, is_open) == verdict
