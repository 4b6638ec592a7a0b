"""Prices as data and the exact cost of a response (farm.costs.pricing)."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.costs.pricing import COLUMNS, Price, PriceBook, cost, default_pricebook
from farm.jobs import Usage

HEADER = ",".join(COLUMNS)
GOOD_ROW = "m-1,1.00,5.00,1.25,2.00,0.10,official pricing page,2025"

EXPECTED_MODELS = {
    "claude-haiku-4-5",
    "claude-sonnet-4",
    "claude-sonnet-4-5",
    "claude-sonnet-4-6",
    "claude-opus-4-5",
    "claude-opus-4-6",
    "claude-opus-4-7",
    "claude-opus-4-8",
    "claude-opus-5",
    "claude-sonnet-5",
    "claude-sonnet-5-5",
    "claude-opus-5-5",
    "claude-haiku-5-5",
}
# (input, output) per the price table of /work/shared/anthropic-api.md
EXPECTED_IO = {
    "claude-haiku-4-5": ("1.00", "5.00"),
    "claude-sonnet-4": ("3.00", "15.00"),
    "claude-sonnet-4-5": ("3.00", "15.00"),
    "claude-sonnet-4-6": ("3.00", "15.00"),
    "claude-opus-4-5": ("5.00", "25.00"),
    "claude-opus-4-6": ("5.00", "25.00"),
    "claude-opus-4-7": ("5.00", "25.00"),
    "claude-opus-4-8": ("5.00", "25.00"),
    "claude-opus-5": ("5.00", "25.00"),
    "claude-sonnet-5": ("2.00", "10.00"),
    "claude-sonnet-5-5": ("2.00", "10.00"),
    "claude-opus-5-5": ("4.00", "20.00"),
    "claude-haiku-5-5": ("0.10", "0.50"),
}
UNVERIFIED = {"claude-sonnet-4-6", "claude-haiku-5-5"}


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return default_pricebook()


def haiku(book: PriceBook) -> Price:
    price = book.price("claude-haiku-4-5")
    assert price is not None
    return price


def write_csv(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- the packaged data ---------------------------------------------------------------


def test_packaged_csv_covers_every_model_in_the_doc(book: PriceBook) -> None:
    assert set(book) == EXPECTED_MODELS
    assert len(book) == len(EXPECTED_MODELS)


@pytest.mark.parametrize("model", sorted(EXPECTED_MODELS))
def test_every_row_matches_the_doc_and_the_multipliers(book: PriceBook, model: str) -> None:
    price = book[model]
    assert price.model == model
    assert (price.input, price.output) == tuple(Decimal(v) for v in EXPECTED_IO[model])
    assert price.cache_write_5m == Decimal("1.25") * price.input
    assert price.cache_write_1h == 2 * price.input
    assert price.cache_read == Decimal("0.1") * price.input
    expected_source = "secondary (unverified)" if model in UNVERIFIED else "official pricing page"
    assert price.source == expected_source
    assert re.fullmatch(r"20[0-9]{2}(-[0-9]{2})?|undated", price.as_of)
    for field in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"):
        assert type(getattr(price, field)) is Decimal


def test_packaged_rows_are_written_out_exactly() -> None:
    text = (Path(__file__).parents[2] / "farm" / "costs" / "prices.csv").read_text(encoding="utf-8")
    assert "claude-haiku-5-5,0.10,0.50,0.125,0.20,0.01," in text
    assert "claude-opus-5,5.00,25.00,6.25,10.00,0.50," in text


def test_default_pricebook_is_read_once_and_equals_explicit_load() -> None:
    assert default_pricebook() is default_pricebook()
    explicit = PriceBook.load(Path(__file__).parents[2] / "farm" / "costs" / "prices.csv")
    assert dict(explicit) == dict(default_pricebook())


# --- each component priced separately (haiku-4-5: 1 / 5 / 1.25 / 2 / 0.10 per MTok) ----


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(input_tokens=1_000_000), Decimal("1.00")),
        (Usage(input_tokens=1), Decimal("0.000001")),
        (Usage(output_tokens=1_000), Decimal("0.005")),
        (Usage(output_tokens=1_000_000), Decimal("5.00")),
        (Usage(cache_creation_input_tokens=1_000_000), Decimal("1.25")),
        (
            Usage(cache_creation_input_tokens=1_000_000, cache_creation_5m_input_tokens=1_000_000),
            Decimal("1.25"),
        ),
        (
            Usage(cache_creation_input_tokens=1_000_000, cache_creation_1h_input_tokens=1_000_000),
            Decimal("2.00"),
        ),
        (Usage(cache_read_input_tokens=1_000_000), Decimal("0.10")),
        (Usage(cache_read_input_tokens=10), Decimal("0.000001")),
        (Usage(), Decimal(0)),
    ],
)
def test_each_component(book: PriceBook, usage: Usage, expected: Decimal) -> None:
    result = cost(haiku(book), usage)
    assert result == expected
    assert type(result) is Decimal


# --- cache breakdown ---------------------------------------------------------------------

MIXED = {"input_tokens": 2_000, "output_tokens": 500, "cache_read_input_tokens": 100_000}
# base: 2000*1 + 500*5 + 100000*0.1 = 14500 micro-dollars


def test_breakdown_absent_bills_all_cache_writes_at_5m(book: PriceBook) -> None:
    usage = Usage(**MIXED, cache_creation_input_tokens=10_000)
    assert cost(haiku(book), usage) == Decimal("0.027")  # 14500 + 10000*1.25


def test_breakdown_present_bills_5m_and_1h_separately(book: PriceBook) -> None:
    usage = Usage(
        **MIXED,
        cache_creation_input_tokens=10_000,
        cache_creation_5m_input_tokens=4_000,
        cache_creation_1h_input_tokens=6_000,
    )
    assert cost(haiku(book), usage) == Decimal("0.0315")  # 14500 + 4000*1.25 + 6000*2


def test_breakdown_with_only_1h_treats_5m_as_zero(book: PriceBook) -> None:
    usage = Usage(
        **MIXED, cache_creation_input_tokens=10_000, cache_creation_1h_input_tokens=10_000
    )
    assert cost(haiku(book), usage) == Decimal("0.0345")  # 14500 + 10000*2


def test_breakdown_with_only_5m_treats_1h_as_zero(book: PriceBook) -> None:
    # the breakdown is authoritative once present: the total field is not re-billed
    usage = Usage(**MIXED, cache_creation_input_tokens=10_000, cache_creation_5m_input_tokens=4_000)
    assert cost(haiku(book), usage) == Decimal("0.0195")  # 14500 + 4000*1.25


def test_breakdown_of_zeros_bills_no_cache_writes(book: PriceBook) -> None:
    usage = Usage(
        **MIXED,
        cache_creation_input_tokens=0,
        cache_creation_5m_input_tokens=0,
        cache_creation_1h_input_tokens=0,
    )
    assert cost(haiku(book), usage) == Decimal("0.0145")


# --- batch ------------------------------------------------------------------------------


def test_batch_halves_and_stacks_with_cache_prices(book: PriceBook) -> None:
    opus = book["claude-opus-5"]
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_creation_input_tokens=2_000_000,
        cache_creation_5m_input_tokens=1_000_000,
        cache_creation_1h_input_tokens=1_000_000,
        cache_read_input_tokens=1_000_000,
    )
    assert cost(opus, usage) == Decimal("46.75")  # 5 + 25 + 6.25 + 10 + 0.50
    assert cost(opus, usage, batch=True) == Decimal("23.375")


def test_batch_cache_read_and_write_of_one_token_are_exact(book: PriceBook) -> None:
    cheap = book["claude-haiku-5-5"]
    assert cost(cheap, Usage(cache_read_input_tokens=1), batch=True) == Decimal("0.000000005")
    assert cost(cheap, Usage(cache_creation_input_tokens=1), batch=True) == Decimal("0.0000000625")
    assert cost(cheap, Usage(output_tokens=3), batch=True) == Decimal("0.00000075")


def test_batch_of_mixed_usage(book: PriceBook) -> None:
    usage = Usage(**MIXED, cache_creation_input_tokens=10_000)
    assert cost(haiku(book), usage, batch=True) == Decimal("0.0135")


# --- rounding and money type --------------------------------------------------------------


def _price(per_million_input: str) -> Price:
    zero = Decimal(0)
    return Price(
        model="m", input=Decimal(per_million_input), output=zero, cache_write_5m=zero,
        cache_write_1h=zero, cache_read=zero, source="test", as_of="2026",
    )


@pytest.mark.parametrize(
    ("per_million", "expected"),
    [("0.00015", "0.0000000002"), ("0.00025", "0.0000000002"), ("0.00035", "0.0000000004")],
)
def test_quantized_to_10_places_half_even(per_million: str, expected: str) -> None:
    result = cost(_price(per_million), Usage(input_tokens=1))
    assert result == Decimal(expected)
    assert result.as_tuple().exponent == -10


def test_cost_always_has_10_decimal_places(book: PriceBook) -> None:
    assert cost(haiku(book), Usage(input_tokens=1_000_000)).as_tuple().exponent == -10
    assert str(cost(haiku(book), Usage(output_tokens=1_000))) == "0.0050000000"


def test_price_rejects_float_and_negative_and_nan() -> None:
    with pytest.raises(ValidationError):
        Price.model_validate({**_price("1").model_dump(), "input": 1.0})
    with pytest.raises(ValidationError):
        _price("-1")
    with pytest.raises(ValidationError):
        _price("NaN")


def test_negative_token_count_is_rejected(book: PriceBook) -> None:
    with pytest.raises(ValueError, match=r"usage\.output_tokens is negative"):
        cost(haiku(book), Usage(output_tokens=-1))


def test_large_usage_is_exact(book: PriceBook) -> None:
    usage = Usage(input_tokens=10**15, output_tokens=10**15 + 1)
    assert cost(haiku(book), usage) == Decimal("6000000000.000005")


# --- lookups ------------------------------------------------------------------------------


def test_unknown_model_has_unknown_cost_not_zero(book: PriceBook) -> None:
    assert book.price("gpt-4o") is None
    assert book.cost("gpt-4o", Usage(input_tokens=1)) is None
    assert book.cost("gpt-4o", Usage()) is None
    assert book.cost("claude-3-5-sonnet-20241022", Usage(input_tokens=1)) is None


def test_known_model_cost_via_book(book: PriceBook) -> None:
    usage = Usage(input_tokens=1_000_000)
    assert book.cost("claude-sonnet-4-5", usage) == Decimal("3.00")
    assert book.cost("claude-sonnet-4-5", usage, batch=True) == Decimal("1.50")


@pytest.mark.parametrize(
    ("model", "resolved"),
    [
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ],
)
def test_dated_snapshot_resolves_to_base_id(book: PriceBook, model: str, resolved: str) -> None:
    price = book.price(model)
    assert price is not None and price.model == resolved
    usage = Usage(input_tokens=1_000)
    assert book.cost(model, usage) == book.cost(resolved, usage)


@pytest.mark.parametrize(
    "model",
    ["claude-haiku-4-5-2025100", "claude-haiku-4-5-202510011", "claude-haiku-4-5-20251001-x",
     "claude-haiku-4-5-latest", "claude-haiku-4", "CLAUDE-HAIKU-4-5", "-20251001", ""],
)
def test_near_misses_do_not_resolve(book: PriceBook, model: str) -> None:
    assert book.price(model) is None


def test_exact_row_wins_over_snapshot_stripping(tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, GOOD_ROW, GOOD_ROW.replace("m-1,1.00", "m-1-20250101,9.00"))
    book = PriceBook.load(path)
    assert book["m-1-20250101"].input == Decimal("9.00")
    price = book.price("m-1-20250101")
    assert price is not None and price.input == Decimal("9.00")
    price = book.price("m-1-20250102")
    assert price is not None and price.model == "m-1"


# --- immutability -------------------------------------------------------------------------


def test_pricebook_and_price_are_frozen(book: PriceBook) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        book.prices = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        book.prices["x"] = haiku(book)  # type: ignore[index]
    with pytest.raises(ValidationError):
        haiku(book).input = Decimal(0)


def test_pricebook_key_must_match_price_model(book: PriceBook) -> None:
    with pytest.raises(ValueError, match="'other'"):
        PriceBook({"other": haiku(book)})


def test_pricebook_copies_its_input(book: PriceBook) -> None:
    source = {"claude-haiku-4-5": haiku(book)}
    copy = PriceBook(source)
    source.clear()
    assert "claude-haiku-4-5" in copy


# --- bad CSV files --------------------------------------------------------------------------


def test_good_temp_csv_loads(tmp_path: Path) -> None:
    book = PriceBook.load(write_csv(tmp_path, HEADER, GOOD_ROW))
    assert book["m-1"] == Price(
        model="m-1", input=Decimal("1.00"), output=Decimal("5.00"),
        cache_write_5m=Decimal("1.25"), cache_write_1h=Decimal("2.00"),
        cache_read=Decimal("0.10"), source="official pricing page", as_of="2025",
    )


def test_utf8_bom_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("\ufeff" + HEADER + "\n\n" + GOOD_ROW + "\n\n", encoding="utf-8")
    assert list(PriceBook.load(path)) == ["m-1"]


def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PriceBook.load(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ((HEADER, GOOD_ROW.replace("1.00,5.00", "abc,5.00")), r"line 2, column 'input'.*'abc'"),
        ((HEADER, GOOD_ROW.replace("5.00", "")), r"line 2, column 'output'.*not a plain decimal"),
        ((HEADER, GOOD_ROW.replace("0.10", "1e-1")), r"line 2, column 'cache_read'.*'1e-1'"),
        ((HEADER, GOOD_ROW.replace("2.00", "NaN")), r"line 2, column 'cache_write_1h'.*'NaN'"),
        ((HEADER, GOOD_ROW.replace("1.25", "Infinity")), r"column 'cache_write_5m'.*'Infinity'"),
        ((HEADER, GOOD_ROW.replace("1.00", "1,00")), r"line 2: expected 8 fields"),
        ((HEADER, GOOD_ROW.replace("1.25", "-1.25")), r"line 2, column 'cache_write_5m'.*negative"),
        ((HEADER, GOOD_ROW, GOOD_ROW), r"line 3, column 'model'.*duplicate model 'm-1'.*line 2"),
        ((HEADER, GOOD_ROW.replace("m-1", "")), r"line 2, column 'model': empty"),
        ((HEADER, GOOD_ROW.replace("official pricing page", " ")), r"column 'source': empty"),
        ((HEADER, GOOD_ROW.removesuffix("2025")), r"line 2, column 'as_of': empty"),
        ((HEADER, GOOD_ROW.rsplit(",", 1)[0]), r"line 2: expected 8 fields"),
        ((HEADER.replace(",as_of", ""), GOOD_ROW), r"header.*missing \['as_of'\]"),
        ((HEADER + ",notes", GOOD_ROW + ",x"), r"header.*unexpected \['notes'\]"),
        ((HEADER.replace("input,output", "output,input"), GOOD_ROW), r"header must be"),
        ((HEADER,), r"no price rows"),
        ((), r"header must be .*\(empty\)"),
        ((HEADER, 'm-1,"1.00,5.00'), r"malformed CSV after line \d+: unexpected end of data"),
        (('"model,input',), r"malformed CSV"),
    ],
)
def test_bad_csv_raises_a_clear_value_error(
    tmp_path: Path, lines: tuple[str, ...], message: str
) -> None:
    path = write_csv(tmp_path, *lines)
    with pytest.raises(ValueError, match=message) as info:
        PriceBook.load(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, ValidationError)
