"""The cost circuit breaker, pure: spend over a sliding window as USD a minute, and when the
breaker opens and closes. The ledger's Lua does the same steps (farm.costs.ledger_lua).

The window is a sliding-window counter over two fixed buckets of ``window_s``: the spend of
the last ``window_s`` is the current bucket plus the previous one weighted by how much of it
the window still covers. It costs two numbers a scope, and is exact for spend spread evenly
over the previous bucket.

The breaker opens when the rate reaches its threshold and then admits no call until the rate
falls under ``close_share`` of the threshold (hysteresis: it does not flap at the line). It
is about the speed of spending, not its total (budgets) nor provider errors (the circuit
breaker of farm.capacity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SpendWindow:
    """Nano-dollars spent in the bucket starting at ``start`` and in the one before."""

    start: float | None = None
    current: int = 0
    previous: int = 0


def roll(w: SpendWindow, now: float, window_s: float) -> SpendWindow:
    """The window as of ``now``: buckets that ended move back or drop out."""
    if w.start is None or now >= w.start + 2 * window_s:
        return SpendWindow(math.floor(now / window_s) * window_s, 0, 0)
    if now >= w.start + window_s:
        return SpendWindow(w.start + window_s, 0, w.current)
    return w


def spent(w: SpendWindow, now: float, window_s: float) -> float:
    """Nano-dollars spent over the ``window_s`` before ``now`` (w rolled to now)."""
    assert w.start is not None
    covered = max(0.0, 1.0 - (now - w.start) / window_s)
    return w.previous * covered + w.current


def per_minute(w: SpendWindow, now: float, window_s: float) -> float:
    return spent(w, now, window_s) * 60.0 / window_s


def add(w: SpendWindow, now: float, window_s: float, amount: int) -> SpendWindow:
    r = roll(w, now, window_s)
    return SpendWindow(r.start, r.current + amount, r.previous)


@dataclass(frozen=True)
class Verdict:
    admit: bool
    open: bool
    changed: bool  # it opened or closed just now


def check(rate: float, threshold: float, close_share: float, is_open: bool) -> Verdict:
    """Whether a call may go at this spend rate (nano-dollars a minute)."""
    if is_open:
        if rate < close_share * threshold:
            return Verdict(True, False, True)
        return Verdict(False, True, False)
    if rate >= threshold:
        return Verdict(False, True, True)
    return Verdict(True, False, False)
