"""The savings of routing, as pure arithmetic: what a set of jobs would have cost had every
one been sent to the complex model, minus what they did cost.

"The complex model" is the model of the first queue whose complexity is ``complex`` in the
settings' queues. Each job's own token usage — input, output, cache writes and cache reads —
is priced at that model's price; a job's cache writes carry no 5-minute/1-hour breakdown in
the store, so they are priced at the 5-minute rate, as :func:`farm.costs.pricing.cost` does
for such usage. Jobs whose own cost is unknown (a model without a price row) are left out
of both sides: there is nothing to compare them with.

Pricing is linear in the tokens, so the price of a group's summed tokens is the sum of its
jobs' prices (exact: current prices have at most 3 decimal places, see farm.costs.pricing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from farm.costs.pricing import Price, PriceBook, cost
from farm.jobs import Usage
from farm.settings import QueueSpec

COMPLEX = "complex"


def complex_model(queues: Iterable[QueueSpec]) -> str | None:
    """The model of the first queue whose complexity is ``complex``; None without one."""
    return next((q.model for q in queues if q.complexity == COMPLEX), None)


def complex_price(queues: Iterable[QueueSpec], prices: PriceBook) -> Price | None:
    """The complex model's price; None when there is no complex queue or no price row."""
    model = complex_model(queues)
    return None if model is None else prices.price(model)


@dataclass(frozen=True)
class Tokens:
    """Token counts of priced jobs (summed over a group)."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_write", "cache_read"):
            if getattr(self, name) < 0:
                raise ValueError(f"tokens.{name} is negative ({getattr(self, name)})")


def all_complex_cost(price: Price, tokens: Tokens) -> Decimal:
    """What these tokens cost at ``price`` (USD, 10 decimal places)."""
    return cost(price, Usage(input_tokens=tokens.input, output_tokens=tokens.output,
                             cache_creation_input_tokens=tokens.cache_write,
                             cache_read_input_tokens=tokens.cache_read))


@dataclass(frozen=True)
class Savings:
    """Actual cost against the cost had everything gone to the complex model."""

    actual_usd: Decimal
    all_complex_usd: Decimal

    @property
    def saved_usd(self) -> Decimal:
        """All-complex minus actual: positive when routing saved money."""
        return self.all_complex_usd - self.actual_usd

    @property
    def share(self) -> Decimal | None:
        """The saving as a share of the all-complex cost (0.8 = 80 % saved); None when
        everything-complex would have cost nothing."""
        if not self.all_complex_usd:
            return None
        return self.saved_usd / self.all_complex_usd


def savings(price: Price | None, tokens: Tokens, actual_usd: Decimal) -> Savings | None:
    """The savings of jobs that used ``tokens`` and cost ``actual_usd``; None when the
    complex model has no price (nothing to compare with)."""
    if price is None:
        return None
    return Savings(actual_usd=actual_usd, all_complex_usd=all_complex_cost(price, tokens))


def percent(share: Decimal | None) -> str:
    """``0.8125`` as ``81.3 %``; ``-`` for None."""
    if share is None:
        return "-"
    return f"{(share * 100).quantize(Decimal('0.1'))} %"
