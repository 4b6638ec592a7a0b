"""Money as the farm shows it, never as a float and never in scientific notation. Pure.

A cost is a :class:`~decimal.Decimal` with Postgres's ten decimal places, so a free call
reads back as ``Decimal('0E-10')``. ``exact`` writes it for JSON (``"0.0000000000"``, every
digit kept); ``usd`` writes it for people (``$0.000146``: three significant digits, never
less than cents).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import PlainSerializer

SIGNIFICANT = 3


def exact(amount: Decimal) -> str:
    """The exact amount in fixed-point notation: ``0E-10`` becomes ``0.0000000000``."""
    return format(amount, "f")


def usd(amount: Decimal | None, *, significant: int = SIGNIFICANT) -> str:
    """Dollars for a terminal: `significant` digits, at least two decimals, thousands
    grouped (``$0.000146``, ``$0.0644``, ``$12.35``, ``$1,234.57``, ``$0.00``); ``-`` for
    None (no cost known)."""
    if amount is None:
        return "-"
    if not amount:
        return "$0.00"
    size = abs(amount)
    if significant - 1 - size.adjusted() > 2:
        # under a dollar: rounded to its significant digits first, so that 0.0009996 is
        # $0.00100 and not $0.001000
        size = size.quantize(Decimal(1).scaleb(size.adjusted() - significant + 1))
    places = max(2, significant - 1 - size.adjusted())
    return f"{'-' if amount < 0 else ''}${size:,.{places}f}"


# a Decimal field that JSON shows exactly and in fixed point (pydantic would write str():
# "0E-10"); Python code still gets the Decimal
ExactUsd = Annotated[Decimal, PlainSerializer(exact, return_type=str, when_used="json")]
