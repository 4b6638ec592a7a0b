"""`make test-ops`: `farm report --html FILE` from real rows in a Postgres database of its
own, opened in headless Chromium: the DOM it builds has the five SVG charts with their bars
and the escaped tenant name as text, nothing in it fetches anything, and the screenshot is
drawn (the charts' colours, many colours, mostly but not only white), not blank. An empty
period renders as a page saying so.

Chromium must be installed (`make test-ops` installs it); without it the test fails, it
does not skip. FARM_TEST_REPORT_PNG=PATH keeps a copy of the screenshot there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from farm.costs.charts import PALETTE
from tests_browser import FETCHING_TAG, dump_dom, hex_rgb, read_png, screenshot
from tests_reports import EVIL, insert
from tests_support import fresh_database

CHARTS = ("cost-per-day", "cost-by-tenant", "latency", "routing-mix", "savings")


@pytest.fixture(scope="module")
def report_env(service_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[dict[str, str]]:
    with fresh_database(service_urls[1], "farm_report_page", "head") as url:
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            insert(conn)
        engine.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update({"FARM_DATABASE_URL": url, "FARM_BROKER_URL": service_urls[0],
                    "FARM_DATA_DIR": str(tmp_path_factory.mktemp("farm-data"))})
        yield env


def farm_report(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "farm.cli", "report", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


class Charts(HTMLParser):
    """Per section (the h2 id before it): the svg charts and their bars, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.svgs: dict[str, int] = {}
        self.bars: dict[str, int] = {}
        self.elements: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.elements.add(tag)
        if tag == "h2" and found.get("id"):
            self.section = found["id"] or ""
        elif tag == "svg":
            self.svgs[self.section] = self.svgs.get(self.section, 0) + 1
        elif tag == "rect" and found.get("class") == "bar":
            self.bars[self.section] = self.bars.get(self.section, 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_report_renders_in_chromium(report_env: dict[str, str], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert farm_report(report_env, "--html", str(page)).strip() == f"wrote {page}"
    source = page.read_text()
    assert not FETCHING_TAG.search(source)
    assert "http://" not in source and "https://" not in source

    dom = dump_dom(page, tmp_path / "profile")
    assert not FETCHING_TAG.search(dom)
    charts = Charts()
    charts.feed(dom)
    assert charts.svgs == {name: 1 for name in CHARTS}
    # per day by model: 4 days x their models; tenants 3; latency 3 models x 3; 2 routes;
    # savings 4 days x 2
    assert charts.bars == {"cost-per-day": 6, "cost-by-tenant": 3, "latency": 9,
                           "routing-mix": 2, "savings": 8}
    text = " ".join(charts.text)
    assert EVIL in text  # shown as text: the browser made no element of it
    assert "script" not in charts.elements and "b" not in charts.elements
    for words in ("Cost per day by model", "Latency of successful calls per model",
                  "Jobs per queue and complexity", "claude-sonnet-5-5", "P99", "day (UTC)"):
        assert words in text, words

    shot = screenshot(page, tmp_path / "report.png", tmp_path / "profile")
    image = read_png(shot)
    assert (image.width, image.height) == (1280, 2000)
    colours = image.colours()
    white = colours[(255, 255, 255)] / len(image.pixels)
    assert 0.5 < white < 0.97, f"{white:.1%} white"
    assert len(colours) > 50, f"{len(colours)} colours"
    for used in PALETTE[:3]:  # the bars' first three colours are drawn, each in a block
        assert colours[hex_rgb(used)] > 2000, used
    keep = os.environ.get("FARM_TEST_REPORT_PNG")
    if keep:
        shutil.copyfile(shot, keep)


def test_an_empty_period_renders_a_page_saying_so(report_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    page = tmp_path / "empty.html"
    farm_report(report_env, "--html", str(page), "--since", "2099-01-01")
    charts = Charts()
    charts.feed(dump_dom(page, tmp_path / "profile"))
    assert charts.svgs == {} and "No jobs in this period." in " ".join(charts.text)
