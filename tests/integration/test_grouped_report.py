"""The grouped cost report on a real Postgres (a database of its own): known jobs and calls
(tests_reports) give exact sums, P50/P95/P99 (percentile_cont over the raw rows of
successful calls) and savings against the complex queue's model, per day, tenant, queue
and model; `farm report --by/--json/--html` and the Python API show the same numbers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from farm.cli.main import main
from farm.client import Farm
from farm.costs.pricing import default_pricebook
from farm.costs.reports import GroupedRow, grouped
from farm.costs.savings import complex_price
from farm.jobs import Usage
from farm.settings import DEFAULT_QUEUES, Settings
from tests_reports import (
    D0,
    D1,
    D2,
    D3,
    EVIL,
    HAIKU,
    JOBS,
    OPUS,
    SONNET,
    at,
    insert,
)
from tests_support import fresh_database

PRICE = complex_price(DEFAULT_QUEUES, default_pricebook())


@pytest.fixture(scope="module")
def report_db(service_urls: tuple[str, str]) -> Iterator[str]:
    # a session time zone far from UTC: days must still be UTC days
    with fresh_database(service_urls[1], "farm_grouped", "head") as url:
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            insert(conn)
        engine.dispose()
        yield url


@pytest.fixture(scope="module")
def engine(report_db: str) -> Iterator[Engine]:
    engine = create_engine(report_db, poolclass=NullPool,
                           connect_args={"options": "-c TimeZone=Pacific/Auckland"})
    yield engine
    engine.dispose()


def test_the_known_calls_are_priced_as_the_price_book_prices_them() -> None:
    prices = default_pricebook()
    assert PRICE is not None and PRICE.model == SONNET
    for job in JOBS:
        for call in job.calls:
            usage = Usage(input_tokens=call.tokens[0], output_tokens=call.tokens[1],
                          cache_creation_input_tokens=call.tokens[2],
                          cache_read_input_tokens=call.tokens[3])
            expected = prices.cost(call.model, usage)
            assert call.cost == (None if expected is None else expected), (job.key, call)


def row(jobs: int, states: tuple[int, int, int, int], tokens: tuple[int, int, int, int],
        cost: str, unpriced: int, calls: int, errors: int,
        latency: tuple[float, float, float] | None, all_complex: str, saved: str,
        ) -> dict[str, Any]:
    p = latency or (None, None, None)
    return {"jobs": jobs, "succeeded": states[0], "failed": states[1],
            "cancelled": states[2], "pending": states[3], "input_tokens": tokens[0],
            "output_tokens": tokens[1], "cache_write_tokens": tokens[2],
            "cache_read_tokens": tokens[3], "cost_usd": Decimal(cost),
            "unpriced_jobs": unpriced, "calls": calls, "errors": errors, "p50_ms": p[0],
            "p95_ms": p[1], "p99_ms": p[2], "all_complex_usd": Decimal(all_complex),
            "savings_usd": Decimal(saved)}


KEYS = ("day", "tenant", "queue", "model", "complexity")


def check(rows: list[GroupedRow], expected: dict[tuple[Any, ...], dict[str, Any]],
          by: tuple[str, ...]) -> None:
    got = {tuple(getattr(r, k) for k in by): r for r in rows}
    # in order, but text sorts by the database's collation: compared as sets here
    assert set(got) == set(expected) and len(got) == len(rows)
    if by == ("day",):
        assert list(got) == sorted(got)
    for key, want in expected.items():
        r = got[key]
        for k in KEYS:
            if k not in by:
                assert getattr(r, k) is None, (key, k)
        actual = r.model_dump(exclude=set(KEYS))
        for name in ("p50_ms", "p95_ms", "p99_ms"):
            if actual[name] is not None:
                actual[name] = round(actual[name], 6)
        assert actual == want, key
        assert r.succeeded + r.failed + r.cancelled + r.pending == r.jobs
        for money in ("cost_usd", "all_complex_usd", "savings_usd"):
            assert isinstance(getattr(r, money), Decimal)


def test_by_model(engine: Engine) -> None:
    # a job counts under the model that served it (B3: haiku, its queue's fallback); a call
    # under its own model (B3's overloaded call: sonnet)
    check(grouped(engine, ["model"], complex_price=PRICE, since=at(D1, "00:00:00")), {
        # A1 A2 A4 B1 B3 B5 C1 C2 C3; ok latencies 100 200 300 400 500
        (HAIKU,): row(9, (5, 1, 1, 2), (3800, 1720, 100, 1200), "0.012645", 0, 8, 3,
                      (300.0, 480.0, 496.0), "0.02529", "0.012645"),
        # B4: cost unknown, left out of cost and savings
        (OPUS,): row(1, (1, 0, 0, 0), (300, 100, 0, 0), "0", 1, 1, 0,
                     (4000.0, 4000.0, 4000.0), "0", "0"),
        # A3 B2, already on the complex model: nothing saved; ok 1000 2000
        (SONNET,): row(2, (2, 0, 0, 0), (1100, 1050, 0, 0), "0.0127", 0, 3, 1,
                       (1500.0, 1950.0, 1990.0), "0.0127", "0"),
    }, ("model",))


def test_by_day_counts_utc_days(engine: Engine) -> None:
    # A1 at 00:00:00 and A4 at 23:59:59 UTC are D1 (the session is in Auckland); Z0 is out
    check(grouped(engine, "day", complex_price=PRICE, since=at(D1, "00:00:00")), {
        # ok 100 200 1000
        (D1,): row(4, (3, 1, 0, 0), (4000, 2500, 100, 200), "0.022645", 0, 6, 3,
                   (200.0, 920.0, 984.0), "0.03329", "0.010645"),
        # ok 300 400 2000 4000
        (D2,): row(5, (4, 0, 1, 0), (1100, 350, 0, 1000), "0.0025", 1, 5, 1,
                   (1200.0, 3700.0, 3940.0), "0.0043", "0.0018"),
        (D3,): row(3, (1, 0, 0, 2), (100, 20, 0, 0), "0.0002", 0, 1, 0,
                   (500.0, 500.0, 500.0), "0.0004", "0.0002"),
    }, ("day",))


def test_by_tenant_and_model_keeps_calls_without_jobs(engine: Engine) -> None:
    check(grouped(engine, "tenant,model", complex_price=PRICE, since=at(D1, "00:00:00")), {
        (EVIL, SONNET): row(1, (1, 0, 0, 0), (100, 50, 0, 0), "0.0007", 0, 1, 0,
                            (2000.0, 2000.0, 2000.0), "0.0007", "0"),
        # A1 A2 B1 B3 C1 C3; ok 100 200 300 400 500
        ("acme", HAIKU): row(6, (5, 0, 0, 1), (3800, 1720, 100, 1200), "0.012645", 0, 6, 1,
                             (300.0, 480.0, 496.0), "0.02529", "0.012645"),
        ("acme", OPUS): row(1, (1, 0, 0, 0), (300, 100, 0, 0), "0", 1, 1, 0,
                            (4000.0, 4000.0, 4000.0), "0", "0"),
        # B3's overloaded call: no acme job was served by sonnet
        ("acme", SONNET): row(0, (0, 0, 0, 0), (0, 0, 0, 0), "0", 0, 1, 1, None, "0", "0"),
        ("globex", HAIKU): row(3, (0, 1, 1, 1), (0, 0, 0, 0), "0", 0, 2, 2, None, "0", "0"),
        ("globex", SONNET): row(1, (1, 0, 0, 0), (1000, 1000, 0, 0), "0.012", 0, 1, 0,
                                (1000.0, 1000.0, 1000.0), "0.012", "0"),
    }, ("tenant", "model"))


def test_by_queue_and_complexity(engine: Engine) -> None:
    rows = grouped(engine, ["queue", "complexity"], complex_price=PRICE,
                   since=at(D1, "00:00:00"))
    assert [(r.queue, r.complexity, r.jobs, r.calls, r.cost_usd, r.savings_usd)
            for r in rows] == [
        ("haiku-simple", "simple", 8, 7, Decimal("0.011945"), Decimal("0.011945")),
        ("sonnet-complex", "complex", 4, 5, Decimal("0.0134"), Decimal("0.0007")),
    ]


def test_totals_and_the_period(engine: Engine) -> None:
    # ok latencies 100 200 300 400 500 1000 2000 4000
    check(grouped(engine, (), complex_price=PRICE, since=at(D1, "00:00:00")), {
        (): row(12, (8, 1, 1, 2), (5200, 2870, 100, 1200), "0.025345", 1, 12, 4,
                (450.0, 3300.0, 3860.0), "0.03799", "0.012645"),
    }, ())
    # [D1, D3): D3's jobs are out
    check(grouped(engine, (), complex_price=PRICE, since=at(D1, "00:00:00"),
                  until=at(D3, "00:00:00")), {
        (): row(9, (7, 1, 1, 0), (5100, 2850, 100, 1200), "0.025145", 1, 11, 4,
                (400.0, 3400.0, 3880.0), "0.03759", "0.012445"),
    }, ())
    # no price for the complex model: no savings, the rest unchanged
    unpriced = grouped(engine, (), complex_price=None, since=at(D1, "00:00:00"))[0]
    assert unpriced.savings_usd is None and unpriced.all_complex_usd is None
    assert unpriced.cost_usd == Decimal("0.025345")
    # an empty period: one row of zeros, no percentiles
    empty = grouped(engine, (), complex_price=PRICE, since=at(D3, "12:00:00"))
    check(empty, {(): row(0, (0, 0, 0, 0), (0, 0, 0, 0), "0", 0, 0, 0, None, "0", "0")}, ())
    assert grouped(engine, "day", complex_price=PRICE, since=at(D3, "12:00:00")) == []
    # everything: Z0 the day before counts too
    assert grouped(engine, "day", complex_price=PRICE)[0].day == D0


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot group by 'week'"):
        grouped(None, ["day", "week"], complex_price=PRICE)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(report_db: str, service_urls: tuple[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"FARM_DATABASE_URL": report_db, "FARM_BROKER_URL": service_urls[0],
            "FARM_DATA_DIR": str(tmp_path_factory.mktemp("farm-data"))}


def farm(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_groups_and_writes_json(env: dict[str, str]) -> None:
    code, out, err = farm(env, "report", "--by", "day", "--by", "model",
                          "--since", "2026-04-01", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 6  # D1: haiku, sonnet; D2: haiku, opus, sonnet; D3: haiku
    first = rows[0]
    assert (first["day"], first["model"], first["jobs"]) == ("2026-04-01", HAIKU, 3)
    assert "tenant" not in first and "queue" not in first
    # A1 A2 A4: 0.003645 + 0.007, saved as much again (sonnet-5-5 is twice haiku-4-5)
    assert (first["cost_usd"], first["savings_usd"]) == ("0.0106450000", "0.0106450000")
    assert (first["p50_ms"], first["p95_ms"], first["p99_ms"]) == (150.0, 195.0, 199.0)
    code, table, err = farm(env, "report", "--by", "tenant", "--since", "2026-04-01")
    assert code == 0, err
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["tenant", "jobs"] and "p99" in lines[0]
    assert lines[-3].split()[:2] == ["total", "12"] or lines[-2].split()[:2] == ["total", "12"]
    assert "WARNING: 1 job(s)" in table and "$0.0253+?" in table


def test_the_cli_keeps_the_default_table_and_refuses_bad_options(env: dict[str, str]
                                                                   ) -> None:
    code, out, err = farm(env, "report", "--since-hours", "100000")
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["queue", "model", "jobs"]
    code, out, err = farm(env, "report", "--json")
    assert code == 0 and {r["queue"] for r in json.loads(out)} == {"haiku-simple",
                                                                   "sonnet-complex"}
    code, _, err = farm(env, "report", "--by", "week")
    assert code == 2 and "cannot group by 'week'" in err
    code, _, err = farm(env, "report", "--since", "1h", "--since-hours", "2")
    assert code == 2 and "not both" in err
    code, _, err = farm(env, "report", "--html", "x.html", "--by", "day")
    assert code == 2 and "--by and --json do not apply" in err


def test_the_python_api_and_the_html_page(report_db: str, service_urls: tuple[str, str],
                                          tmp_path: Path) -> None:
    settings = Settings(database_url=report_db, broker_url=service_urls[0],
                        data_dir=tmp_path)
    with Farm(settings) as f:
        old = f.report(since=at(D1, "00:00:00"))
        assert [(r.queue, r.model) for r in old][:1] == [("haiku-simple", HAIKU)]
        total = f.report(since=at(D1, "00:00:00"), by=())[0]
        assert total.savings_usd == Decimal("0.012645")
        page = f.report_html(tmp_path / "r.html", since=at(D1, "00:00:00"))
        empty = f.report_html(tmp_path / "e.html", since=at(D3, "12:00:00"))
    html = page.read_text()
    assert "&lt;b&gt;evil&lt;/b&gt; &amp; &quot;co&quot;" in html and "<script" not in html
    assert html.count("<svg") == 5 and "$0.0253" in html
    assert "No jobs in this period" in empty.read_text()
    code, out, err = farm({"FARM_DATABASE_URL": report_db,
                           "FARM_BROKER_URL": service_urls[0],
                           "FARM_DATA_DIR": str(tmp_path)},
                          "report", "--html", str(tmp_path / "cli.html"))
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'cli.html'}", err
    assert (tmp_path / "cli.html").read_text().count("<svg") == 5
