"""The simulator's rate limits: token buckets per model, their headers, per-model overrides.

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
    capacity: float
    rate: float  # refill per second
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, amount: float, now: float) -> float:
        self.refill(now)
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)


def ratelimit_headers(buckets: dict[str, TokenBucket], now: float) -> dict[str, str]:
    """anthropic-ratelimit-* headers; "tokens" shows the most depleted token bucket."""
    tokens = [b for kind, b in buckets.items() if kind != "requests"]
    shown = {**buckets, **({"tokens": min(tokens, key=lambda b: b.level)} if tokens else {})}
    headers: dict[str, str] = {}
    for kind, b in shown.items():
        left, p = max(0, math.floor(b.level)), f"anthropic-ratelimit-{kind}-"
        full_at = time.gmtime(math.ceil(now + max(0.0, b.capacity - b.level) / b.rate))
        headers[p + "limit"], headers[p + "reset"] = str(int(b.capacity)), time.strftime(
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


def make_buckets(limits: dict[str, int | None], now: float) -> dict[str, TokenBucket]:
    """Full buckets (capacity = the per-minute limit, refilling limit/60 per second)."""
    return {kind: TokenBucket(v, v / 60, v, now) for kind, v in limits.items() if v}


def admission_wait(buckets: dict[str, TokenBucket], costs: dict[str, int], now: float
                   ) -> tuple[float, str]:
    """(seconds until every bucket can pay its cost, the bucket that waits longest)."""
    return max(((b.wait_s(costs[k], now), k) for k, b in buckets.items()), default=(0.0, ""))
