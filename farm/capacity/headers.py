"""The provider's anthropic-ratelimit-* headers, read: the limits, what is left, and the
burst (seconds of the rate) the provider's request bucket holds. Pure; garbage is ignored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

HEADER_KINDS = {"requests": "rpm", "input-tokens": "itpm", "output-tokens": "otpm"}


@dataclass(frozen=True)
class Observation:
    limits: Mapping[str, int] = field(default_factory=dict)
    remaining: Mapping[str, int] = field(default_factory=dict)
    burst_s: float | None = None  # the provider's request bucket, in seconds of its rate


def _int(raw: str | None) -> int | None:
    try:
        return int(str(raw).strip()) if raw is not None else None
    except ValueError:
        return None


def _epoch(raw: str | None) -> float | None:
    """An RFC 3339 time ('2026-12-01T04:31:06Z') as Unix seconds, None when unreadable; one
    in whole seconds may be rounded up, so it counts as a second earlier (the burst read
    from it errs small: safe)."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp() - (1.0 if moment.microsecond == 0 else 0.0)


SKEW_S = 2.0  # a ``date`` header further than this from our clock: the clocks disagree


def _provider_now(lower: Mapping[str, str], now: float) -> float:
    """``now`` as the provider's clock tells it: ours (sub-second), unless its ``date`` header
    (whole seconds) is more than SKEW_S away, when the hosts' clocks disagree."""
    try:
        date = parsedate_to_datetime(lower["date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return now
    return date if abs(date - now) > SKEW_S else now


def burst_seen(limit: int, remaining: int, reset: float, now: float) -> float:
    """A token bucket of ``limit``/min with ``remaining`` left is full again at ``reset``:
    it holds remaining/rate + (reset - now) seconds of its rate (``farm.capacity.pacing``)."""
    return remaining / (limit / 60) + max(0.0, reset - now)


def parse_headers(headers: Mapping[str, str], now: float) -> Observation:
    """The limits and remainders per kind, and the request bucket's burst (from the requests
    limit, remaining and reset: token remainders are rounded to the thousand)."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    limits: dict[str, int] = {}
    remaining: dict[str, int] = {}
    for name, kind in HEADER_KINDS.items():
        limit = _int(lower.get(f"anthropic-ratelimit-{name}-limit"))
        left = _int(lower.get(f"anthropic-ratelimit-{name}-remaining"))
        if limit is not None and limit > 0:
            limits[kind] = limit
        if left is not None and left >= 0:
            remaining[kind] = left
    burst = None
    reset = _epoch(lower.get("anthropic-ratelimit-requests-reset"))
    if "rpm" in limits and "rpm" in remaining and reset is not None:
        burst = burst_seen(limits["rpm"], remaining["rpm"], reset, _provider_now(lower, now))
    return Observation(limits, remaining, burst)
