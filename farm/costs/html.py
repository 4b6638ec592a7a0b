"""`farm report --html FILE`: one self-contained HTML page — inline CSS and inline SVG
charts (farm.costs.charts), no script, no font, no image, nothing fetched — with the cost
per day by model, the cost by tenant, latency percentiles per model, the routing mix and
the savings of routing. :func:`load` reads the groupings (farm.costs.reports.grouped);
:func:`page` is pure; every string from the database is HTML-escaped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import escape
from pathlib import Path

from sqlalchemy.engine import Engine

from farm.costs import charts
from farm.costs.money import usd
from farm.costs.pricing import Price
from farm.costs.reports import GroupedRow, grouped
from farm.costs.savings import percent

MAX_FILLED_DAYS = 92  # a longer period shows only the days that had jobs
NO_JOBS = "No jobs in this period"


@dataclass(frozen=True)
class PageData:
    """What the page shows: the groupings, the totals (percentiles over every call) and
    where the numbers come from."""

    total: GroupedRow
    by_day_model: list[GroupedRow]
    by_day: list[GroupedRow]
    by_tenant: list[GroupedRow]
    by_model: list[GroupedRow]
    by_route: list[GroupedRow]  # queue and complexity
    complex_model: str | None
    since: datetime | None
    until: datetime | None
    generated_at: datetime


def load(engine: Engine, *, complex_model: str | None, complex_price: Price | None,
         since: datetime | None, until: datetime | None, now: datetime) -> PageData:
    def by(*keys: str) -> list[GroupedRow]:
        return grouped(engine, keys, complex_price=complex_price, since=since, until=until)

    return PageData(total=by()[0], by_day_model=by("day", "model"), by_day=by("day"),
                    by_tenant=by("tenant"), by_model=by("model"),
                    by_route=by("queue", "complexity"), complex_model=complex_model,
                    since=since, until=until, generated_at=now)


def write(path: Path, data: PageData) -> Path:
    path.write_text(page(data), encoding="utf-8")
    return path


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
       color: #1b1b1b; background: #ffffff; }
h1 { font-size: 24px; margin: 0 0 4px 0; } h2 { font-size: 18px; margin: 28px 0 6px 0; }
.meta { color: #555555; margin: 0 0 16px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.card .k { color: #555555; font-size: 12px; } .card .v { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; margin-top: 8px; font-size: 13px; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
svg.chart { display: block; margin: 6px 0 10px 0; font-size: 12px; }
svg .title { font-size: 15px; font-weight: 600; } svg .grid { stroke: #e5e5e5; }
svg .axis-label { fill: #333333; font-size: 13px; } svg .tick, svg .category { fill: #333333; }
.empty { font-size: 20px; padding: 40px; border: 2px dashed #d0d7de; text-align: center; }
"""


def page(data: PageData) -> str:
    """The whole page, as text."""
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>farm cost report, {escape(_period(data))}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>farm cost report</h1><p class=\"meta\">{escape(_meta(data))}</p>")
    if not data.total.jobs:
        return head + f'<p class="empty" id="no-jobs">{NO_JOBS}.</p></body></html>\n'
    sections = [_cards(data.total), _cost_per_day(data), _cost_by_tenant(data),
                _latency(data), _routing_mix(data), _savings(data), _model_table(data)]
    return head + "".join(sections) + "</body></html>\n"


def _period(data: PageData) -> str:
    since = "the first job" if data.since is None else _utc(data.since)
    until = "now" if data.until is None else _utc(data.until)
    return f"{since} to {until}"


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _meta(data: PageData) -> str:
    complex_model = data.complex_model or "none (no queue of complexity 'complex')"
    return (f"Jobs created from {_period(data)}; generated {_utc(data.generated_at)}. "
            f"Days are UTC "
            f"days. Savings: against sending every job to {complex_model}.")


def _card(name: str, value: str) -> str:
    return (f'<div class="card"><div class="k">{escape(name)}</div>'
            f'<div class="v">{escape(value)}</div></div>')


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _cards(t: GroupedRow) -> str:
    unpriced = f" (+{t.unpriced_jobs} unpriced)" if t.unpriced_jobs else ""
    cards = [
        ("jobs", f"{t.jobs:,}"),
        ("succeeded / failed / cancelled / pending",
         f"{t.succeeded:,} / {t.failed:,} / {t.cancelled:,} / {t.pending:,}"),
        ("cost", usd(t.cost_usd) + unpriced),
        ("calls (errors)", f"{t.calls:,} ({t.errors:,})"),
        ("latency P50 / P95 / P99", f"{_ms(t.p50_ms)} / {_ms(t.p95_ms)} / {_ms(t.p99_ms)}"),
        ("saved by routing", _saved(t)),
    ]
    return (f'<h2>Summary</h2><div class="cards" id="summary">'
            f'{"".join(_card(k, v) for k, v in cards)}</div>')


def _saved(r: GroupedRow) -> str:
    if r.savings_usd is None or r.all_complex_usd is None:
        return "- (the complex model has no price)"
    share = r.savings_usd / r.all_complex_usd if r.all_complex_usd else None
    return f"{usd(r.savings_usd)} ({percent(share)})"


def _tick_usd(amount: Decimal) -> str:
    """An axis mark in dollars with only the digits it has ($0.005, $0.025, $0.01)."""
    return usd(amount, significant=max(1, len(amount.normalize().as_tuple().digits)))


def _days(rows: Sequence[GroupedRow]) -> list[date]:
    found = sorted({r.day for r in rows if r.day is not None})
    if not found or (found[-1] - found[0]).days >= MAX_FILLED_DAYS:
        return found
    return [found[0] + timedelta(days=i) for i in range((found[-1] - found[0]).days + 1)]


def _section(anchor: str, heading: str, svg: str, note: str = "") -> str:
    extra = f'<p class="meta">{escape(note)}</p>' if note else ""
    return f'<h2 id="{anchor}">{escape(heading)}</h2>{svg}{extra}'


def _cost_per_day(data: PageData) -> str:
    days = _days(data.by_day_model)
    models = sorted({r.model or "" for r in data.by_day_model})
    cost = {(r.day, r.model or ""): r.cost_usd for r in data.by_day_model}
    series = [charts.Series(m, tuple(cost.get((d, m), Decimal(0)) for d in days))
              for m in models]
    svg = charts.stacked_bars("Cost per day by model (USD)", [d.isoformat() for d in days],
                              series, label=usd, x_label="day (UTC)",
                              y_label="cost (USD)", tick_label=_tick_usd)
    return _section("cost-per-day", "Cost per day by model", svg)


def _cost_by_tenant(data: PageData) -> str:
    rows = sorted(data.by_tenant, key=lambda r: (-r.cost_usd, r.tenant or ""))
    svg = charts.horizontal_bars("Cost by tenant (USD)", [r.tenant or "" for r in rows],
                                 [r.cost_usd for r in rows], label=usd,
                                 value_label="cost (USD)")
    return _section("cost-by-tenant", "Cost by tenant", svg)


def _latency(data: PageData) -> str:
    rows = [r for r in data.by_model if r.p50_ms is not None]
    series = [charts.Series(name, tuple(_decimal(getattr(r, f"{name.lower()}_ms"))
                                        for r in rows)) for name in ("P50", "P95", "P99")]
    svg = charts.grouped_bars("Latency of successful calls per model (ms)",
                              [r.model or "" for r in rows], series, label=_ms_label,
                              x_label="model", y_label="latency (ms)")
    note = "" if rows else "No successful call in this period."
    return _section("latency", "Latency percentiles per model", svg, note)


def _decimal(value: float | None) -> Decimal:
    return Decimal(0) if value is None else Decimal(f"{value:.1f}")


def _ms_label(value: Decimal) -> str:
    return f"{value:,.0f} ms"


def _routing_mix(data: PageData) -> str:
    rows = data.by_route
    labels = [f"{r.queue} ({r.complexity})" for r in rows]
    svg = charts.horizontal_bars("Jobs per queue and complexity", labels,
                                 [Decimal(r.jobs) for r in rows],
                                 label=lambda v: f"{v:,.0f} jobs",
                                 value_label="jobs")
    return _section("routing-mix", "Routing mix", svg)


def _savings(data: PageData) -> str:
    days = _days(data.by_day)
    known = {r.day: r for r in data.by_day}
    if data.total.all_complex_usd is None:
        return _section("savings", "Savings of routing", "",
                        f"The complex model ({data.complex_model or 'none'}) has no price "
                        "row: no savings to show.")
    actual = tuple(known[d].cost_usd if d in known else Decimal(0) for d in days)
    everything = tuple((known[d].all_complex_usd or Decimal(0)) if d in known else Decimal(0)
                       for d in days)
    svg = charts.grouped_bars(
        f"Actual cost vs every job on {data.complex_model} (USD)",
        [d.isoformat() for d in days],
        [charts.Series("actual", actual), charts.Series(f"all on {data.complex_model}",
                                                         everything)],
        label=usd, x_label="day (UTC)", y_label="cost (USD)", tick_label=_tick_usd)
    t = data.total
    note = (f"Actual {usd(t.cost_usd)}; every job on {data.complex_model}: "
            f"{usd(t.all_complex_usd)}; saved {_saved(t)}."
            + (f" {t.unpriced_jobs} job(s) on a model without a price are left out."
               if t.unpriced_jobs else ""))
    return _section("savings", "Savings of routing", svg, note)


def _model_table(data: PageData) -> str:
    head = ("<tr><th>model</th><th>jobs</th><th>ok</th><th>failed</th><th>cancelled</th>"
            "<th>pending</th><th>tokens</th><th>cost</th><th>calls</th><th>errors</th>"
            "<th>P50</th><th>P95</th><th>P99</th><th>saved</th></tr>")
    rows = []
    for r in data.by_model:
        tokens = r.input_tokens + r.output_tokens + r.cache_write_tokens + r.cache_read_tokens
        cells = [r.model or "", f"{r.jobs:,}", f"{r.succeeded:,}", f"{r.failed:,}",
                 f"{r.cancelled:,}", f"{r.pending:,}", f"{tokens:,}", usd(r.cost_usd),
                 f"{r.calls:,}", f"{r.errors:,}", _ms(r.p50_ms), _ms(r.p95_ms),
                 _ms(r.p99_ms), usd(r.savings_usd)]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return (f'<h2 id="by-model">By model</h2><table>{head}{"".join(rows)}</table>')
