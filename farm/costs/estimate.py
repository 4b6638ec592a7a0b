"""What one call can cost at most, and the cost cap a job runs under. Pure: no I/O.

The worst case of a call is what the budgets reserve before it goes out and what the per-job
cap is checked against: its input tokens, estimated from the text (4 characters a token,
rounded up, plus ``FRAMING_TOKENS`` for the request's framing), at the input price, plus
``max_tokens`` at the output price (the provider never bills more output than that). Prompt
caching: the prefix that farm.costs.caching plans breakpoints for, at the call's TTL, is
priced at that TTL's cache-write price (1.25x input for "5m", 2x for "1h"), since the call
may be the one that writes it; a request that places its own cache_control has all its
input priced at the dearest write price. The input is an estimate: a call whose real input
tokens come out higher is charged the difference when its usage is known.

Money goes to Redis in whole nano-dollars (1e-9 USD): every current price per million tokens
has at most three decimals, so a token's price is a whole number of nano-dollars and the
sums in Redis are exact (integers up to 2**53 nano-dollars: $9 million).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal

from farm.costs.caching import CacheSetting, marks_its_own, plan_breakpoints
from farm.costs.money import usd
from farm.costs.pricing import BATCH_FACTOR, MILLION, Price
from farm.jobs import JobRequest
from farm.provider.body import wire_body

FRAMING_TOKENS = 16  # role markers and request framing the character estimate leaves out
NANO = Decimal("1E9")
DEFAULT_MAX_COST_USD = Decimal("2.00")
DEFAULT_CACHE_TTL: CacheSetting = "5m"  # FARM_PROMPT_CACHE's default


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


@dataclass(frozen=True)
class WorstCase:
    """The most one call of a request can cost on a model, and how that is made up."""

    model: str
    input_tokens: int
    output_tokens: int
    input_price: Decimal  # USD per million tokens
    output_price: Decimal
    usd: Decimal
    # of input_tokens, those priced as prompt-cache writes (the planned cached prefix)
    cache_write_tokens: int = 0
    cache_write_price: Decimal = Decimal(0)

    @property
    def nano(self) -> int:
        return to_nano(self.usd)

    def explain(self) -> str:
        written = self.cache_write_tokens
        head = f"{self.input_tokens - written:,} input tokens at {usd(self.input_price)}/M + "
        if written:
            head += (f"{written:,} cache-write tokens at {usd(self.cache_write_price)}/M + ")
        return (f"{head}{self.output_tokens:,} output tokens at {usd(self.output_price)}/M on "
                f"{self.model} = {usd(self.usd, significant=4)}")


def worst_case(price: Price, request: JobRequest, ttl: CacheSetting | None = None
               ) -> WorstCase:
    """The worst case of one call of ``request`` on ``price.model`` whose prompt-cache TTL
    is ``ttl`` (farm.costs.prompt_cache.cache_ttl); None: the request's own ``cache``, else
    FARM_PROMPT_CACHE's default ("5m")."""
    tokens_in = input_tokens_bound(request)
    output = price.output * request.max_tokens
    body = wire_body(price.model, request)
    if marks_its_own(body):
        per_in = max(price.input, price.cache_write_1h, price.cache_write_5m)
        return WorstCase(price.model, tokens_in, request.max_tokens, per_in, price.output,
                         (per_in * tokens_in + output) / MILLION)
    ttl = ttl or request.cache or DEFAULT_CACHE_TTL
    plan = plan_breakpoints(body, price.model, ttl)
    written = min(plan.cached_tokens, tokens_in)
    per_write = price.cache_write_1h if ttl == "1h" else price.cache_write_5m
    total = (price.input * (tokens_in - written) + per_write * written + output) / MILLION
    return WorstCase(price.model, tokens_in, request.max_tokens, price.input, price.output,
                     total, written, per_write if written else Decimal(0))


def at_batch_price(worst: WorstCase) -> WorstCase:
    """A synchronous call's worst case at the Message Batches price (every price halved)."""
    return replace(worst, input_price=worst.input_price * BATCH_FACTOR,
                   output_price=worst.output_price * BATCH_FACTOR,
                   cache_write_price=worst.cache_write_price * BATCH_FACTOR,
                   usd=worst.usd * BATCH_FACTOR)


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
