"""The simulator's rate limits: token buckets per model, their headers, per-model overrides.

A bucket refills its per-minute limit in a minute (limit/60 per second); its capacity is the
whole limit, or with ``burst_s`` (short-interval enforcement, as the provider may do) only
burst_s seconds of it: 300 requests/min with burst_s 10 is a bucket of 50 refilling 5/s. A
cost above the capacity (a 20k-token prompt in a 10 s input-token bucket) is admitted once
the bucket is full and takes its level below zero: the debt is repaid before the next one.

Pure (no I/O, the time is passed in) so the unit tests check the arithmetic directly;
``farm.sim`` imports everything back, so ``from farm.sim.server import TokenBucket`` still works.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

# model_limits keys → bucket kinds (the names in the anthropic-ratelimit-* headers)
LIMIT_KINDS = {"rpm": "requests", "itpm": "input-tokens", "otpm": "output-tokens"}


@dataclass
class TokenBucket:
    capacity: float  # the most it holds: the per-minute limit, or burst_s seconds of it
    rate: float  # refill per second: limit / 60
    level: float  # below zero after a cost above the capacity
    updated: float

    @property
    def limit(self) -> int:
        """The per-minute limit (what the bucket refills in a minute), as the headers show it."""
        return round(self.rate * 60)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be charged; one above the capacity waits for a full
        bucket (else it would be refused forever)."""
        self.refill(now)
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)


def ratelimit_headers(buckets: dict[str, TokenBucket], now: float) -> dict[str, str]:
    """anthropic-ratelimit-* headers: -limit the per-minute limit, -remaining the level (tokens
    rounded down to the thousand), -reset when the bucket is full again; "tokens" shows the
    most depleted token bucket."""
    tokens = [b for kind, b in buckets.items() if kind != "requests"]
    shown = {**buckets, **({"tokens": min(tokens, key=lambda b: b.level)} if tokens else {})}
    headers: dict[str, str] = {}
    for kind, b in shown.items():
        left, p = max(0, math.floor(b.level)), f"anthropic-ratelimit-{kind}-"
        full_at = time.gmtime(math.ceil(now + max(0.0, b.capacity - b.level) / b.rate))
        headers[p + "limit"], headers[p + "reset"] = str(b.limit), time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", full_at)
        headers[p + "remaining"] = str(left if kind == "requests" else left // 1000 * 1000)
    return headers


def current_headers(buckets: dict[str, TokenBucket], now: float) -> dict[str, str]:
    """The headers as of ``now`` (refilled first), for a response that charges nothing."""
    for bucket in buckets.values():
        bucket.refill(now)
    return ratelimit_headers(buckets, now)


def check_model_limits(value: Any) -> Any:
    """Reject what a typo would silently turn into "unlimited": unknown keys, values < 1."""
    if not isinstance(value, dict):
        raise ValueError("model_limits must map a model to {rpm, itpm, otpm}")
    for model, limits in value.items():
        if not isinstance(limits, dict):
            raise ValueError(f"model_limits[{model!r}] must be an object like {{\"rpm\": 50}}")
        if unknown := sorted(set(limits) - set(LIMIT_KINDS)):
            raise ValueError(f"model_limits[{model!r}]: unknown limit {', '.join(unknown)} "
                             f"(known: {', '.join(LIMIT_KINDS)})")
        for key, limit in limits.items():
            if type(limit) is not int or limit < 1:
                raise ValueError(f"model_limits[{model!r}].{key} must be a positive integer, "
                                 f"not {limit!r}")
    return value


def limits_for(model: str, model_limits: dict[str, dict[str, int]],
               default: dict[str, int | None]) -> dict[str, int | None]:
    """Bucket kind → per-minute limit for ``model``: its own where given, else ``default``
    (keyed rpm/itpm/otpm, None = unlimited)."""
    own = model_limits.get(model, {})
    return {kind: own.get(key, default.get(key)) for key, kind in LIMIT_KINDS.items()}


def make_buckets(limits: dict[str, int | None], now: float, burst_s: float | None = None
                 ) -> dict[str, TokenBucket]:
    """Full buckets refilling limit/60 per second; capacity the per-minute limit, or burst_s
    seconds of it."""
    share = 1.0 if burst_s is None else burst_s / 60
    return {kind: TokenBucket(v * share, v / 60, v * share, now)
            for kind, v in limits.items() if v}


def admission_wait(buckets: dict[str, TokenBucket], costs: dict[str, int], now: float
                   ) -> tuple[float, str]:
    """(seconds until every bucket can pay its cost, the bucket that waits longest)."""
    return max(((b.wait_s(costs[k], now), k) for k, b in buckets.items()), default=(0.0, ""))
