"""What one call can cost at most, and the cost cap a job runs under. Pure: no I/O.

The worst case of a call is what the budgets reserve before it goes out and what the per-job
cap is checked against: its input tokens, estimated from the text (4 characters a token,
rounded up, plus ``FRAMING_TOKENS`` for the request's framing), at the input price (the
1-hour cache-write price when the request asks for caching: the dearest way its input can be
billed), plus ``max_tokens`` at the output price (the provider never bills more output than
that). The input is an estimate: a call whose real input tokens come out higher is charged
the difference when its usage is known.

Money goes to Redis in whole nano-dollars (1e-9 USD): every current price per million tokens
has at most three decimals, so a token's price is a whole number of nano-dollars and the
sums in Redis are exact (integers up to 2**53 nano-dollars: $9 million).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from farm.costs.money import usd
from farm.costs.pricing import MILLION, Price
from farm.jobs import JobRequest

FRAMING_TOKENS = 16  # role markers and request framing the character estimate leaves out
NANO = Decimal("1E9")
DEFAULT_MAX_COST_USD = Decimal("2.00")


def to_nano(amount: Decimal) -> int:
    """USD as whole nano-dollars, rounded up (a reservation never comes out short)."""
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(amount: int | float) -> Decimal:
    return Decimal(int(amount)) / NANO


def input_tokens_bound(request: JobRequest) -> int:
    """The input tokens a request is reserved for: prompt, system and tools by their text."""
    chars = len(request.prompt) + len(request.system or "") + sum(map(len, request.documents))
    if request.tools:
        chars += len(json.dumps(list(request.tools)))
    return max(1, math.ceil(chars / 4)) + FRAMING_TOKENS


def asks_caching(request: JobRequest) -> bool:
    """Whether any part of the request carries ``cache_control`` (its input may be billed
    at the cache-write price)."""
    return any("cache_control" in json.dumps(tool) for tool in request.tools)


@dataclass(frozen=True)
class WorstCase:
    """The most one call of a request can cost on a model, and how that is made up."""

    model: str
    input_tokens: int
    output_tokens: int
    input_price: Decimal  # USD per million tokens
    output_price: Decimal
    usd: Decimal

    @property
    def nano(self) -> int:
        return to_nano(self.usd)

    def explain(self) -> str:
        return (f"{self.input_tokens:,} input tokens at {usd(self.input_price)}/M + "
                f"{self.output_tokens:,} output tokens at {usd(self.output_price)}/M on "
                f"{self.model} = {usd(self.usd, significant=4)}")


def worst_case(price: Price, request: JobRequest) -> WorstCase:
    """The worst case of one call of ``request`` on ``price.model``."""
    tokens_in = input_tokens_bound(request)
    per_in = max(price.input, price.cache_write_1h, price.cache_write_5m) \
        if asks_caching(request) else price.input
    total = (per_in * tokens_in + price.output * request.max_tokens) / MILLION
    return WorstCase(price.model, tokens_in, request.max_tokens, per_in, price.output, total)


def cost_cap(request: JobRequest, queue: str, *, default: Decimal,
             tenants: Mapping[str, Decimal], queues: Mapping[str, Decimal]) -> Decimal:
    """The most a job may cost over all its calls: its own ``max_cost_usd``, else its
    tenant's, else its queue's, else the farm's default (the most specific one wins)."""
    if request.max_cost_usd is not None:
        return request.max_cost_usd
    if request.tenant in tenants:
        return tenants[request.tenant]
    if queue in queues:
        return queues[queue]
    return default


@dataclass(frozen=True)
class CapCheck:
    """Whether one more call fits a job's cap: what it has cost so far plus this call's
    worst case, against the cap."""

    cap: Decimal
    spent: Decimal
    worst: WorstCase

    @property
    def fits(self) -> bool:
        return self.spent + self.worst.usd <= self.cap

    def explain(self) -> str:
        head = (f"worst case {usd(self.worst.usd, significant=4)} ({self.worst.explain()})")
        if self.spent:
            head += f" on top of {usd(self.spent, significant=4)} already spent"
        verb = "fits" if self.fits else "exceeds"
        return f"{head} {verb} the job's cost cap {usd(self.cap)} (max_cost_usd)"
