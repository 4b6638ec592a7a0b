"""What the job commands read from their options, as pure functions: ``--metadata
KEY=VALUE`` and ``--since`` (hours, a duration or an ISO time). Each raises ValueError with
a one-line message naming the problem; the commands turn it into click's usage error."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def metadata(items: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a mapping (the value may hold '='; a key only once)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key in out:
            raise ValueError(f"key {key!r} given twice")
        out[key] = value
    return out


def since(text: str, now: datetime) -> datetime:
    """A moment from ``--since``: hours back (``6``, ``1.5``), a duration back (``90s``,
    ``30m``, ``2h``, ``7d``) or an ISO time (``2026-11-30``, ``2026-11-30T08:00``,
    ``…+01:00``; without an offset it is UTC)."""
    found = DURATION.fullmatch(text.strip())
    if found:
        amount, unit = float(found[1]), found[2] or "h"
        return now - timedelta(seconds=amount * UNITS[unit])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected hours (6, 1.5), a duration (90s, 30m, 2h, 7d) or an ISO "
                         f"time (2026-11-30T08:00), got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
