"""The grouped report's pure parts: the savings arithmetic (farm.costs.savings), the SVG
charts (farm.costs.charts), the HTML page (farm.costs.html: self-contained, escaped, every
chart there, a clear page for an empty period) and the grouped table."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from farm.costs import charts
from farm.costs.html import NO_JOBS, PageData, page
from farm.costs.pricing import default_pricebook
from farm.costs.reports import GroupedRow, check_keys, grouped_sql, render_grouped
from farm.costs.savings import (
    Savings,
    Tokens,
    all_complex_cost,
    complex_model,
    complex_price,
    percent,
    savings,
)
from farm.settings import DEFAULT_QUEUES, QueueSpec
from tests_browser import FETCHING_TAG

PRICES = default_pricebook()
SONNET = PRICES["claude-sonnet-5-5"]  # 2 / 10 / 2.5 / 0.2 USD per MTok
EVIL = '<b>evil</b> & "co" <script>alert(1)</script>'
URL_NAME = '<img src="https://evil.example/x.png"><a href="http://evil.example">t</a>'


# --- savings ------------------------------------------------------------------------

def test_the_complex_model_is_the_first_complex_queues() -> None:
    assert complex_model(DEFAULT_QUEUES) == "claude-sonnet-5-5"
    queues = (QueueSpec(name="a", model="claude-haiku-4-5", complexity="simple"),
              QueueSpec(name="b", model="claude-opus-4-5", complexity="complex"),
              QueueSpec(name="c", model="claude-sonnet-4-5", complexity="complex"))
    assert complex_model(queues) == "claude-opus-4-5"
    assert complex_price(queues, PRICES) == PRICES["claude-opus-4-5"]
    assert complex_model(queues[:1]) is None and complex_price(queues[:1], PRICES) is None
    unpriced = (QueueSpec(name="x", model="claude-nonexistent", complexity="complex"),)
    assert complex_price(unpriced, PRICES) is None


def test_every_token_class_is_priced_at_the_complex_price() -> None:
    # 1000 in x 2 + 500 out x 10 + 100 write x 2.5 + 200 read x 0.2 = 7290 per million
    assert all_complex_cost(SONNET, Tokens(1000, 500, 100, 200)) == Decimal("0.00729")
    assert all_complex_cost(SONNET, Tokens(1, 0, 0, 0)) == Decimal("0.000002")
    assert all_complex_cost(SONNET, Tokens(0, 0, 0, 1)) == Decimal("0.0000002")
    assert all_complex_cost(SONNET, Tokens()) == Decimal(0)
    opus = PRICES["claude-opus-4-5"]  # 5 / 25 / 6.25 / 0.5
    assert all_complex_cost(opus, Tokens(1000, 500, 100, 200)) == Decimal("0.018225")
    with pytest.raises(ValueError, match=r"tokens\.output is negative"):
        Tokens(0, -1, 0, 0)


def test_savings_are_all_complex_minus_actual() -> None:
    saved = savings(SONNET, Tokens(1000, 500, 100, 200), Decimal("0.003645"))
    assert saved == Savings(actual_usd=Decimal("0.003645"), all_complex_usd=Decimal("0.00729"))
    assert saved.saved_usd == Decimal("0.003645") and saved.share == Decimal("0.5")
    # routing to a dearer model than the complex one costs money: a negative saving
    dear = Savings(actual_usd=Decimal("0.03"), all_complex_usd=Decimal("0.01"))
    assert dear.saved_usd == Decimal("-0.02") and dear.share == Decimal(-2)
    assert Savings(Decimal(0), Decimal(0)).share is None
    assert savings(None, Tokens(1, 1, 1, 1), Decimal(1)) is None
    assert percent(Decimal("0.8126")) == "81.3 %" and percent(None) == "-"
    for value in (saved.saved_usd, saved.all_complex_usd):
        assert isinstance(value, Decimal)


# --- the grouped query and table ------------------------------------------------------

def test_grouping_keys_are_checked_and_never_text_from_outside() -> None:
    assert check_keys(["day,model", "model", " tenant "]) == ("day", "model", "tenant")
    assert check_keys("queue") == ("queue",) and check_keys(()) == ()
    with pytest.raises(ValueError, match="cannot group by 'day; DROP TABLE jobs'"):
        check_keys(["day; DROP TABLE jobs"])
    sql = grouped_sql(("day", "model"))
    assert "FULL JOIN c USING (day, model)" in sql and "ORDER BY day, model" in sql
    assert sql.count("percentile_cont(0.99)") == 1
    assert "CROSS JOIN c" in grouped_sql(()) and "GROUP BY" not in grouped_sql(())


def row(**fields: Any) -> GroupedRow:
    base: dict[str, Any] = dict(
        jobs=10, succeeded=6, failed=2, cancelled=1, pending=1, input_tokens=1000,
        output_tokens=500, cache_write_tokens=100, cache_read_tokens=200,
        cost_usd=Decimal("0.0036450000"), unpriced_jobs=0, calls=12, errors=2,
        p50_ms=300.0, p95_ms=480.0, p99_ms=496.0, all_complex_usd=Decimal("0.0072900000"),
        savings_usd=Decimal("0.0036450000"))
    return GroupedRow(**{**base, **fields})


def test_the_grouped_table_has_the_keys_percentiles_and_savings() -> None:
    rows = [row(day=date(2026, 4, 1), model="claude-haiku-4-5"),
            row(day=date(2026, 4, 2), model="claude-sonnet-5-5", p50_ms=None, p95_ms=None,
                p99_ms=None, unpriced_jobs=1)]
    table = render_grouped(rows, ("day", "model"), row(jobs=20, unpriced_jobs=1)).splitlines()
    assert table[0].split() == ["day", "model", "jobs", "ok", "fail", "cancel", "pend",
                                "tokens", "cost", "USD", "calls", "err", "p50", "ms", "p95",
                                "ms", "p99", "ms", "saved", "USD", "saved"]
    assert table[2].split() == ["2026-04-01", "claude-haiku-4-5", "10", "6", "2", "1", "1",
                                "1800", "$0.00364", "12", "2", "300", "480", "496",
                                "$0.00364", "50.0", "%"]
    assert table[3].split()[-8:] == ["12", "2", "-", "-", "-", "$0.00364", "50.0", "%"]
    assert "$0.00364+?" in table[3]
    assert table[5].split()[:2] == ["total", "20"]
    assert table[6].startswith("WARNING: 1 job(s)")
    unpriced = render_grouped([], ("tenant",), row(all_complex_usd=None, savings_usd=None))
    assert "no savings shown" in unpriced


# --- charts ---------------------------------------------------------------------------

def test_axis_marks_are_round_and_cover_the_top() -> None:
    assert charts.ticks(Decimal("0.025345")) == [Decimal(0), Decimal("0.01"),
                                                 Decimal("0.02"), Decimal("0.03")]
    assert charts.ticks(Decimal(4000)) == [Decimal(i * 1000) for i in range(5)]
    assert charts.ticks(Decimal(0)) == [Decimal(0), Decimal(1)]
    for top in (Decimal("0.0000003"), Decimal("7.77"), Decimal(123456)):
        marks = charts.ticks(top)
        assert marks[0] == 0 and marks[-1] >= top and 2 <= len(marks) <= 7


def _bars(svg: str) -> list[str]:
    return re.findall(r'<rect class="bar"[^>]*>', svg)


def test_charts_draw_one_bar_per_value_and_escape_every_string() -> None:
    series = [charts.Series(EVIL, (Decimal(1), Decimal(0), Decimal(2))),
              charts.Series("b", (Decimal(3), Decimal(1), Decimal(0)))]
    categories = ["2026-04-01", EVIL, "2026-04-03"]
    stacked = charts.stacked_bars(EVIL, categories, series, label=lambda v: f"{v} <u>",
                                  x_label=EVIL, y_label="y")
    assert len(_bars(stacked)) == 4  # zero values draw nothing on a stack
    grouped = charts.grouped_bars("t", categories, series, label=str, x_label="x",
                                  y_label="y")
    assert len(_bars(grouped)) == 6
    across = charts.horizontal_bars("t", [EVIL, "b"], [Decimal(2), Decimal(0)], label=str,
                                    value_label="v")
    assert len(_bars(across)) == 2
    for svg in (stacked, grouped, across):
        assert "<script" not in svg and "<b>" not in svg and "<u>" not in svg
        assert "&lt;script&gt;" in svg and "&lt;b&gt;evil&lt;/b&gt; &amp; &quot;co&quot;" in svg
        assert "http" not in svg  # no xmlns either: inline SVG in HTML needs none
    with pytest.raises(ValueError, match="has 2 values for 3 categories"):
        charts.grouped_bars("t", categories, [charts.Series("s", (Decimal(1),) * 2)],
                            label=str, x_label="x", y_label="y")
    with pytest.raises(ValueError, match="negative"):
        charts.stacked_bars("t", ["a"], [charts.Series("s", (Decimal(-1),))], label=str,
                            x_label="x", y_label="y")


def test_the_tallest_stack_reaches_the_top_mark() -> None:
    svg = charts.stacked_bars("t", ["a", "b"], [charts.Series("s", (Decimal(5),
                                                                   Decimal(10)))],
                              label=str, x_label="x", y_label="y")
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([\d.]+)"', svg)]
    assert heights[1] == pytest.approx(2 * heights[0])
    assert heights[1] == pytest.approx(charts.HEIGHT - charts.TOP - charts.BOTTOM)


# --- the page ---------------------------------------------------------------------------

def data(total: GroupedRow, **fields: Any) -> PageData:
    base: dict[str, Any] = dict(
        total=total,
        by_day_model=[row(day=date(2026, 4, 1), model="claude-haiku-4-5"),
                      row(day=date(2026, 4, 3), model="claude-sonnet-5-5",
                          cost_usd=Decimal("0.012"))],
        by_day=[row(day=date(2026, 4, 1)), row(day=date(2026, 4, 3))],
        by_tenant=[row(tenant=EVIL), row(tenant="acme", cost_usd=Decimal("1234.5"))],
        by_model=[row(model="claude-haiku-4-5"), row(model=EVIL, p50_ms=None, p95_ms=None,
                                                     p99_ms=None)],
        by_route=[row(queue="haiku-simple", complexity="simple"),
                  row(queue="sonnet-complex", complexity="complex", jobs=4)],
        complex_model="claude-sonnet-5-5", since=datetime(2026, 4, 1, tzinfo=UTC),
        until=None, generated_at=datetime(2026, 4, 4, 12, 0, tzinfo=UTC))
    return PageData(**{**base, **fields})


def test_the_page_is_self_contained_escaped_and_has_every_chart() -> None:
    html = page(data(row(jobs=20)))
    for remote in ("http://", "https://", "src=", "<script", "<link", "@import", "url(",
                   "<img", "<iframe", "<object"):
        assert remote not in html.lower(), remote
    assert not FETCHING_TAG.search(html)
    assert html.count("<svg") == 5
    for anchor in ("cost-per-day", "cost-by-tenant", "latency", "routing-mix", "savings"):
        assert f'<h2 id="{anchor}">' in html, anchor
    # each chart has bars, titles, axis labels and legends where they apply
    assert len(re.findall(r'<rect class="bar"', html)) >= 10
    for text in ("Cost per day by model (USD)", "Cost by tenant (USD)", "day (UTC)",
                 "latency (ms)", "Jobs per queue and complexity",
                 "Actual cost vs every job on claude-sonnet-5-5 (USD)", ">P99<"):
        assert text in html, text
    # the days between are filled (2026-04-02 had no jobs)
    assert ">2026-04-02<" in html
    # amounts as farm.costs.money.usd writes them
    assert "$1,234.50" in html and "$0.00364 (50.0 %)" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "2026-04-01 00:00 UTC to now" in html


def test_names_holding_urls_are_text_not_fetches() -> None:
    html = page(data(row(jobs=1), by_tenant=[row(tenant=URL_NAME)],
                     by_model=[row(model=URL_NAME)]))
    assert not FETCHING_TAG.search(html)
    assert "<img" not in html and "<a " not in html
    assert "&lt;img src=&quot;https://evil.example/x.png&quot;&gt;" in html


def test_an_empty_period_is_a_clear_page() -> None:
    empty = row(jobs=0, succeeded=0, failed=0, cancelled=0, pending=0, calls=0,
                errors=0, p50_ms=None, p95_ms=None, p99_ms=None, cost_usd=Decimal(0))
    html = page(data(empty, by_day_model=[], by_day=[], by_tenant=[], by_model=[],
                     by_route=[]))
    assert f"{NO_JOBS}." in html and "<svg" not in html and html.endswith("</html>\n")


def test_without_a_complex_price_the_savings_say_so() -> None:
    html = page(data(row(jobs=3, all_complex_usd=None, savings_usd=None),
                     complex_model="claude-nonexistent"))
    assert "claude-nonexistent) has no price row" in html and html.count("<svg") == 4
