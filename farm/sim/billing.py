"""What the simulated API bills: one message's usage priced with the farm's price book
(``farm.costs.pricing``), batch results at half price. Pure; ``/_sim/stats`` adds it up so
a test or a benchmark can check the farm's own cost accounting against "the provider's bill".
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from farm.costs.pricing import default_pricebook
from farm.jobs import Usage


def usage_of(usage: dict[str, Any]) -> Usage:
    """The farm's Usage of a simulated message's ``usage`` object (cache writes by TTL)."""
    split = usage.get("cache_creation") or {}
    return Usage(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
                 cache_creation_input_tokens=usage["cache_creation_input_tokens"],
                 cache_read_input_tokens=usage["cache_read_input_tokens"],
                 cache_creation_5m_input_tokens=split.get("ephemeral_5m_input_tokens"),
                 cache_creation_1h_input_tokens=split.get("ephemeral_1h_input_tokens"))


def bill(model: str, usage: dict[str, Any], *, batch: bool = False) -> Decimal | None:
    """USD billed for one message; None for a model without a price (the sim bills nothing)."""
    return default_pricebook().cost(model, usage_of(usage), batch=batch)


def usd(amount: Decimal) -> str:
    """A total as plain decimal text ("0.0000000000", never "0E-10")."""
    return format(amount, "f")
