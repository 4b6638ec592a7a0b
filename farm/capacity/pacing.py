"""Pacing, pure: how many seconds of its rate a model's buckets hold now.

A bucket that holds a whole minute of requests lets a farm with hundreds of free slots fire
a minute's worth of calls in the first second; a provider may enforce its per-minute limit
over shorter intervals (60 requests/min as 1 request/s) and refuse that burst. So a bucket
holds ``burst_s`` seconds of its rate (``LimiterConfig.burst_s``, default 5 s) and refills at
the rate: calls go out evenly, and waiting calls are scheduled one behind the other
(``max_delay_s``) instead of all at once.

The burst the provider allows is learned, per model, and only ever lowers ours:
  * from the headers: a token bucket of capacity C refilling r/s that has R left is full
    again at reset = now + (C - R)/r, so its burst is C/r = R/r + (reset - now) seconds
    (``farm.capacity.headers``); one below ours becomes ours (``lowered``);
  * from a 429 that starts a pause: ours is halved (``halved``), down to ``min_burst_s``.
A learned burst grows back linearly, from nothing to ``burst_s`` in ``burst_probe_s``
(``burst_now``), so a provider that stopped enforcing the short interval gets the full burst
again a minute later, while one that still does says so in its next headers.

The Lua script's ``burst_of`` / ``learn`` (``farm.capacity.scripts``) do the same float steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.capacity.config import LimiterConfig


@dataclass(frozen=True)
class Burst:
    """A learned burst: ``seconds`` of the rate, as of ``at`` (it grows back from there)."""

    seconds: float
    at: float


def burst_now(config: LimiterConfig, learned: Burst | None, now: float) -> float:
    """The burst in force at ``now``: the learned one grown back, within [min, burst_s]."""
    if learned is None:
        return config.burst_s
    grown = learned.seconds + max(0.0, now - learned.at) * (config.burst_s / config.burst_probe_s)
    return max(config.min_burst_s, min(config.burst_s, grown))


def lowered(config: LimiterConfig, learned: Burst | None, now: float,
            seen_s: float | None) -> Burst | None:
    """A burst seen in the headers below the one in force replaces it (never raises it)."""
    if seen_s is None or seen_s >= burst_now(config, learned, now):
        return learned
    return Burst(max(config.min_burst_s, seen_s), now)


def halved(config: LimiterConfig, learned: Burst | None, now: float) -> Burst:
    """After a 429 that starts a pause: half the burst in force."""
    return Burst(max(config.min_burst_s, burst_now(config, learned, now) / 2), now)
