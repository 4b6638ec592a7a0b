"""Token prices as data, and the exact cost of one response.

Prices live in the packaged ``farm/costs/prices.csv`` (USD per million tokens, one row per model
id, with the source and date of each price). Money is always :class:`~decimal.Decimal`,
never float. A model without a price row has *unknown* cost (``None``), never 0.

Rounding: a cost is computed exactly and then quantized to 10 decimal places (USD) with
ROUND_HALF_EVEN. For prices with at most 3 decimal places (all current rows) the result is
exact, batch discount included, so no rounding ever happens in practice.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from farm.jobs import Usage

COLUMNS: tuple[str, ...] = (
    "model", "input", "output", "cache_write_5m", "cache_write_1h", "cache_read", "source",
    "as_of",
)
PRICES: tuple[str, ...] = COLUMNS[1:6]  # the Decimal columns
MILLION = Decimal(1_000_000)
BATCH_FACTOR = Decimal("0.5")
COST_QUANTUM = Decimal("1E-10")  # 10 decimal places of a dollar

_DECIMAL_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_SNAPSHOT_RE = re.compile(r"(?P<base>.+)-[0-9]{8}")
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)  # far wider than any real bill

PerMillion = Annotated[Decimal, Field(ge=0, strict=True, allow_inf_nan=False)]


class Price(BaseModel):
    """One model's prices in USD per million tokens, with where and when they came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    input: PerMillion
    output: PerMillion
    cache_write_5m: PerMillion
    cache_write_1h: PerMillion
    cache_read: PerMillion
    source: str = Field(min_length=1)
    as_of: str = Field(min_length=1)


def cost(price: Price, usage: Usage, *, batch: bool = False) -> Decimal:
    """USD cost of one response: sum of price x tokens / 1e6 over every token class.

    Without a cache-write breakdown (both TTL fields None) every cache_creation token is
    billed at the 5-minute rate; otherwise the 5m and 1h counts are billed separately (a
    missing one counts as 0). ``batch`` halves everything (stacks with cache prices).
    The result is quantized to 10 decimal places, ROUND_HALF_EVEN (see module doc).
    """
    write_5m = usage.cache_creation_5m_input_tokens
    write_1h = usage.cache_creation_1h_input_tokens
    if write_5m is None and write_1h is None:
        write_5m, write_1h = usage.cache_creation_input_tokens, 0
    terms = (
        ("input_tokens", price.input, usage.input_tokens),
        ("output_tokens", price.output, usage.output_tokens),
        ("cache_creation_5m_input_tokens", price.cache_write_5m, write_5m or 0),
        ("cache_creation_1h_input_tokens", price.cache_write_1h, write_1h or 0),
        ("cache_read_input_tokens", price.cache_read, usage.cache_read_input_tokens),
    )
    # the explicit 60-digit context's own methods: exact, and no context switch per call
    ctx = _CONTEXT
    total = Decimal(0)
    for name, per_million, tokens in terms:
        if tokens < 0:
            raise ValueError(f"usage.{name} is negative ({tokens})")
        if tokens:
            total = ctx.add(total, ctx.multiply(per_million, tokens))
    total = ctx.divide(total, MILLION)
    if batch:
        total = ctx.multiply(total, BATCH_FACTOR)
    return total.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN, context=ctx)


@dataclass(frozen=True, eq=False)
class PriceBook(Mapping[str, Price]):
    """A read-only mapping of model id -> :class:`Price`."""

    prices: Mapping[str, Price] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, price in self.prices.items():
            if key != price.model:
                raise ValueError(f"price book key {key!r} != its price's model {price.model!r}")
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def __getitem__(self, model: str) -> Price:
        return self.prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.prices)

    def __len__(self) -> int:
        return len(self.prices)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceBook:
        """Read and validate a price CSV; by default the packaged ``farm/costs/prices.csv``."""
        if path is None:
            packaged = resources.files("farm.costs").joinpath("prices.csv")
            text = packaged.read_text(encoding="utf-8-sig")
            return cls._parse(text, "farm/costs/prices.csv")
        return cls._parse(path.read_text(encoding="utf-8-sig"), str(path))

    @classmethod
    def _parse(cls, text: str, origin: str) -> PriceBook:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        prices: dict[str, Price] = {}
        first_line: dict[str, int] = {}
        try:
            _check_header(tuple(reader.fieldnames or ()), origin)
            for row in reader:
                where = f"{origin}: line {reader.line_num}"
                if None in row or any(row[c] is None for c in COLUMNS):
                    raise ValueError(f"{where}: expected {len(COLUMNS)} fields")
                cells = {c: row[c].strip() for c in COLUMNS}
                for column in ("model", "source", "as_of"):
                    if not cells[column]:
                        raise ValueError(f"{where}, column {column!r}: empty")
                model = cells["model"]
                if model in prices:
                    raise ValueError(
                        f"{where}, column 'model': duplicate model {model!r}"
                        f" (first on line {first_line[model]})"
                    )
                amount = {c: _parse_amount(cells[c], f"{where}, column {c!r}") for c in PRICES}
                prices[model] = Price(
                    model=model,
                    input=amount["input"],
                    output=amount["output"],
                    cache_write_5m=amount["cache_write_5m"],
                    cache_write_1h=amount["cache_write_1h"],
                    cache_read=amount["cache_read"],
                    source=cells["source"],
                    as_of=cells["as_of"],
                )
                first_line[model] = reader.line_num
        except csv.Error as exc:
            msg = f"{origin}: malformed CSV after line {reader.line_num}: {exc}"
            raise ValueError(msg) from exc
        if not prices:
            raise ValueError(f"{origin}: no price rows")
        return cls(prices)

    def price(self, model: str) -> Price | None:
        """The price of ``model``; a dated snapshot id (``…-YYYYMMDD``) falls back to its base."""
        found = self.prices.get(model)
        if found is None and (match := _SNAPSHOT_RE.fullmatch(model)):
            found = self.prices.get(match["base"])
        return found

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> Decimal | None:
        """USD cost of one response from ``model``, or None when the model has no price."""
        price = self.price(model)
        return None if price is None else cost(price, usage, batch=batch)


def _check_header(header: tuple[str, ...], origin: str) -> None:
    if header != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        extra = [c for c in header if c not in COLUMNS]
        raise ValueError(
            f"{origin}: header must be {','.join(COLUMNS)}; got {','.join(header) or '(empty)'}"
            f" (missing {missing}, unexpected {extra})"
        )


def _parse_amount(text: str, where: str) -> Decimal:
    if not _DECIMAL_RE.fullmatch(text):
        raise ValueError(f"{where}: {text!r} is not a plain decimal number (e.g. 3.75)")
    value = Decimal(text)  # cannot fail: the pattern admits plain decimals only
    if value < 0:
        raise ValueError(f"{where}: negative price {text}")
    return value


@functools.cache
def default_pricebook() -> PriceBook:
    """The packaged price book, read once per process."""
    return PriceBook.load()
