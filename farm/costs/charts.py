"""Bar charts as inline SVG text, for the HTML report (farm.costs.html). Pure: values in,
markup out, no JavaScript and nothing fetched. Every string is HTML-escaped here, where it
becomes markup, so a tenant or model name can never inject any.

Values are Decimal (money stays exact up to the labels, written by the caller's
``label`` function, e.g. farm.costs.money.usd); floats are used only for pixel positions.
Every bar is a ``<rect class="bar">`` with a ``<title>`` (the browser's tooltip) giving its
series, category and value."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

Label = Callable[[Decimal], str]

# distinguishable colours, also for the colour-blind (Okabe-Ito, then a few more)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000", "#999999", "#882255", "#44AA99", "#117733")
WIDTH, HEIGHT = 960, 340
LEFT, RIGHT, TOP, BOTTOM = 90, 20, 64, 80  # plot margins (top: title, legend; bottom: labels)
LEGEND_Y = 48


@dataclass(frozen=True)
class Series:
    """A named row of values, one per category."""

    name: str
    values: tuple[Decimal, ...]


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def ticks(top: Decimal, count: int = 5) -> list[Decimal]:
    """Round axis marks from 0 to at least ``top``: steps of 1, 2 or 5 times a power of
    ten, about ``count`` of them."""
    if top <= 0:
        return [Decimal(0), Decimal(1)]
    raw = top / count
    step = Decimal(1).scaleb(raw.adjusted())
    for factor in (1, 2, 5, 10):
        step = Decimal(factor).scaleb(raw.adjusted())
        if step >= raw:
            break
    steps = math.ceil(top / step)
    return [step * i for i in range(steps + 1)]


def _svg(title: str, body: list[str], height: int = HEIGHT) -> str:
    return (f'<svg class="chart" role="img" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>'
            f'<text class="title" x="{WIDTH / 2}" y="24" text-anchor="middle">'
            f'{escape(title)}</text>' + "".join(body) + "</svg>")


def _legend(names: Sequence[str], y: float) -> list[str]:
    out, x = [], float(LEFT)
    for i, name in enumerate(names):
        out.append(f'<g class="legend-item"><rect x="{x:.1f}" y="{y - 10:.1f}" width="12" '
                   f'height="12" fill="{colour(i)}"/><text x="{x + 16:.1f}" y="{y:.1f}">'
                   f'{escape(name)}</text></g>')
        x += 30 + 7.5 * len(name)
    return [f'<g class="legend">{"".join(out)}</g>']


def _value_axis(marks: list[Decimal], label: Label, axis_label: str, plot_h: float,
                ) -> list[str]:
    top = marks[-1]
    out = []
    for mark in marks:
        y = TOP + plot_h - float(mark / top) * plot_h
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{escape(label(mark))}</text>')
    middle = TOP + plot_h / 2
    out.append(f'<text class="axis-label" x="16" y="{middle:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {middle:.1f})">{escape(axis_label)}</text>')
    return out


def _category_labels(categories: Sequence[str], slot: float, plot_h: float,
                     axis_label: str) -> list[str]:
    out = []
    longest = max((len(c) for c in categories), default=0)
    tilt = longest * 7 > slot  # labels wider than their slot are written at a slant
    y = TOP + plot_h + 16
    for i, name in enumerate(categories):
        x = LEFT + slot * (i + 0.5)
        room = 18 if tilt else 24
        shown = name if len(name) <= room else name[:room - 1] + "…"
        turn = f' transform="rotate(-30 {x:.1f} {y:.1f})"' if tilt else ""
        anchor = "end" if tilt else "middle"
        out.append(f'<text class="category" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"'
                   f'{turn}>{escape(shown)}</text>')
    out.append(f'<text class="axis-label" x="{(LEFT + WIDTH - RIGHT) / 2}" '
               f'y="{HEIGHT - 10}" text-anchor="middle">{escape(axis_label)}</text>')
    return out


def _bar(x: float, y: float, w: float, h: float, fill: str, tip: str) -> str:
    return (f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
            f'height="{max(h, 0.0):.1f}" fill="{fill}"><title>{escape(tip)}</title></rect>')


def _check(categories: Sequence[str], series: Sequence[Series]) -> None:
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for "
                             f"{len(categories)} categories")
        if any(v < 0 for v in s.values):
            raise ValueError(f"series {s.name!r} has a negative value")


def stacked_bars(title: str, categories: Sequence[str], series: Sequence[Series], *,
                 label: Label, x_label: str, y_label: str, tick_label: Label | None = None,
                 ) -> str:
    """One bar per category, each series stacked on the ones before."""
    _check(categories, series)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(categories), 1)
    totals = [sum((s.values[i] for s in series), Decimal(0)) for i in range(len(categories))]
    marks = ticks(max(totals, default=Decimal(0)))
    body = _value_axis(marks, tick_label or label, y_label, plot_h)
    for i, category in enumerate(categories):
        base = Decimal(0)
        for k, s in enumerate(series):
            value = s.values[i]
            if not value:
                continue
            y0 = TOP + plot_h - float(base / marks[-1]) * plot_h
            h = float(value / marks[-1]) * plot_h
            body.append(_bar(LEFT + slot * (i + 0.15), y0 - h, slot * 0.7, h, colour(k),
                             f"{s.name}, {category}: {label(value)}"))
            base += value
    body += _category_labels(categories, slot, plot_h, x_label)
    body += _legend([s.name for s in series], LEGEND_Y)
    return _svg(title, body)


def grouped_bars(title: str, categories: Sequence[str], series: Sequence[Series], *,
                 label: Label, x_label: str, y_label: str, tick_label: Label | None = None,
                 ) -> str:
    """For each category, one bar per series side by side."""
    _check(categories, series)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(categories), 1)
    width = slot * 0.8 / max(len(series), 1)
    top = max((v for s in series for v in s.values), default=Decimal(0))
    marks = ticks(top)
    body = _value_axis(marks, tick_label or label, y_label, plot_h)
    for i, category in enumerate(categories):
        for k, s in enumerate(series):
            h = float(s.values[i] / marks[-1]) * plot_h
            body.append(_bar(LEFT + slot * (i + 0.1) + width * k, TOP + plot_h - h, width,
                             h, colour(k), f"{s.name}, {category}: {label(s.values[i])}"))
    body += _category_labels(categories, slot, plot_h, x_label)
    body += _legend([s.name for s in series], LEGEND_Y)
    return _svg(title, body)


def horizontal_bars(title: str, labels: Sequence[str], values: Sequence[Decimal], *,
                    label: Label, value_label: str) -> str:
    """One horizontal bar per label, longest first as given, each with its value."""
    _check(labels, [Series(title, tuple(values))])
    row = 26
    height = TOP + row * max(len(labels), 1) + 56
    left = 200
    plot_w = WIDTH - left - 140
    top = max(values, default=Decimal(0))
    scale = top if top > 0 else Decimal(1)
    body = []
    for i, (name, value) in enumerate(zip(labels, values, strict=True)):
        y = TOP + row * i
        shown = name if len(name) <= 26 else name[:25] + "…"
        w = float(value / scale) * plot_w
        body.append(f'<text class="category" x="{left - 8}" y="{y + 16}" text-anchor="end">'
                    f'{escape(shown)}</text>')
        body.append(_bar(left, y + 3, w, row - 6, colour(i), f"{name}: {label(value)}"))
        body.append(f'<text class="value" x="{left + w + 6:.1f}" y="{y + 16}">'
                    f'{escape(label(value))}</text>')
    body.append(f'<text class="axis-label" x="{left + plot_w / 2}" y="{height - 14}" '
                f'text-anchor="middle">{escape(value_label)}</text>')
    return _svg(title, body, height)
