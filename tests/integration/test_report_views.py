"""The reporting interface on a real Postgres: the cost-report views and `summary()` give
exact numbers on known rows, and a day filter on the views is an index scan at 200k rows.
Each test module's data lives in a database of its own, so no other test's rows count."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from farm.costs.reports import ReportRow, summary
from farm.store.migrate import alembic_config
from tests_support import fresh_database

D1, D2 = date(2026, 3, 1), date(2026, 3, 2)
HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-9"


def _at(day: date, hms: str) -> datetime:
    return datetime.fromisoformat(f"{day.isoformat()}T{hms}+00:00")


# --- known data -------------------------------------------------------------------------
#
# Costs are what farm/costs/prices.csv gives for the tokens (haiku 1/5/1.25/0.10 USD per
# MTok in/out/cache write/cache read, sonnet 3/15/3.75/0.30); claude-opus-9 has no price
# row. A failed call costs 0 and carries no tokens, as the worker records it; a job's
# tokens and cost are the sums of its attempts'. Times are UTC.

# id, queue, model, tenant, status, in, out, cache write, cache read, cost, unpriced,
# served_model, created_at, finished_at
JOBS: dict[str, tuple[Any, ...]] = {
    "J1": ("haiku-simple", HAIKU, "acme", "succeeded", 100, 50, 10, 20,
           Decimal("0.0003645"), False, HAIKU, _at(D1, "10:00:00"), _at(D1, "10:00:02")),
    "J2": ("haiku-simple", HAIKU, "acme", "failed", 0, 0, 0, 0,
           Decimal(0), False, None, _at(D1, "11:00:00"), _at(D1, "11:00:10")),
    "J3": ("haiku-simple", HAIKU, "globex", "dead", 0, 0, 0, 0,
           Decimal(0), False, None, _at(D1, "12:00:00"), _at(D1, "12:01:00")),
    # 23:30 UTC: the next day in the session's time zone (Pacific/Auckland), D1 in UTC
    "J4": ("haiku-simple", HAIKU, "globex", "queued", 0, 0, 0, 0,
           None, False, None, _at(D1, "23:30:00"), None),
    "J5": ("sonnet-complex", OPUS, "acme", "succeeded", 1000, 400, 0, 300,
           None, True, OPUS, _at(D1, "09:00:00"), _at(D1, "09:00:05")),
    "J6": ("sonnet-complex", SONNET, "acme", "cancelled", 0, 0, 0, 0,
           None, False, None, _at(D1, "13:00:00"), _at(D1, "13:00:01")),
    "J7": ("sonnet-complex", SONNET, "acme", "succeeded", 200, 100, 50, 0,
           Decimal("0.0022875"), False, SONNET, _at(D1, "14:00:00"), _at(D1, "14:00:04")),
    "J8": ("sonnet-complex", SONNET, "globex", "running", 0, 0, 0, 0,
           None, False, None, _at(D1, "15:00:00"), None),
    "J16": ("sonnet-complex", SONNET, "globex", "failed", 0, 0, 0, 0,
            Decimal(0), False, None, _at(D1, "16:00:00"), _at(D1, "16:00:02")),
    # created on D1, its only call started on D2
    "J13": ("sonnet-complex", SONNET, "globex", "succeeded", 500, 250, 0, 0,
            Decimal("0.00525"), False, SONNET, _at(D1, "23:59:00"), _at(D2, "00:01:00")),
    "J9": ("haiku-simple", HAIKU, "acme", "succeeded", 10, 5, 0, 0,
           Decimal("0.000035"), False, HAIKU, _at(D2, "00:10:00"), _at(D2, "00:10:01")),
    "J10": ("haiku-simple", HAIKU, "acme", "succeeded", 20, 10, 0, 0,
            Decimal("0.00007"), False, HAIKU, _at(D2, "01:00:00"), _at(D2, "01:00:03")),
    "J11": ("haiku-simple", HAIKU, "acme", "succeeded", 30, 15, 0, 0,
            Decimal("0.000105"), False, HAIKU, _at(D2, "02:00:00"), _at(D2, "02:00:06")),
    # a refusal: HTTP 200, charged, the job failed
    "J12": ("haiku-simple", HAIKU, "globex", "failed", 40, 3, 0, 0,
            Decimal("0.000055"), False, HAIKU, _at(D2, "03:00:00"), _at(D2, "03:00:02")),
    "J14": ("batch", HAIKU, "initech", "queued", 0, 0, 0, 0,
            None, False, None, _at(D2, "04:00:00"), None),
    # a sonnet job served by its queue's fallback model after an overloaded call
    "J15": ("sonnet-complex", SONNET, "acme", "succeeded", 60, 20, 0, 0,
            Decimal("0.00016"), False, HAIKU, _at(D2, "05:00:00"), _at(D2, "05:00:03")),
}

# job, attempt, model, outcome, http status, in, out, cache write, cache read, cost,
# latency ms, started_at (finished_at = started_at + latency)
ATTEMPTS: list[tuple[Any, ...]] = [
    ("J1", 1, HAIKU, "ok", 200, 100, 50, 10, 20, Decimal("0.0003645"), 1500,
     _at(D1, "10:00:00.5")),
    ("J2", 1, HAIKU, "rate_limited", 429, 0, 0, 0, 0, Decimal(0), 200, _at(D1, "11:00:01")),
    ("J2", 2, HAIKU, "bad_request", 400, 0, 0, 0, 0, Decimal(0), 100, _at(D1, "11:00:09")),
    ("J3", 1, HAIKU, "timeout", None, 0, 0, 0, 0, Decimal(0), 30000, _at(D1, "12:00:05")),
    ("J3", 2, HAIKU, "timeout", None, 0, 0, 0, 0, Decimal(0), 30000, _at(D1, "12:00:40")),
    ("J5", 1, OPUS, "ok", 200, 1000, 400, 0, 300, None, 4000, _at(D1, "09:00:00.5")),
    ("J7", 1, SONNET, "overloaded", 529, 0, 0, 0, 0, Decimal(0), 50, _at(D1, "14:00:00.1")),
    ("J7", 2, SONNET, "ok", 200, 200, 100, 50, 0, Decimal("0.0022875"), 3000,
     _at(D1, "14:00:01")),
    ("J16", 1, SONNET, "server_error", 500, 0, 0, 0, 0, Decimal(0), 650, _at(D1, "16:00:01")),
    ("J13", 1, SONNET, "ok", 200, 500, 250, 0, 0, Decimal("0.00525"), 2500,
     _at(D2, "00:00:30")),
    ("J9", 1, HAIKU, "ok", 200, 10, 5, 0, 0, Decimal("0.000035"), 700, _at(D2, "00:10:00.2")),
    ("J10", 1, HAIKU, "ok", 200, 20, 10, 0, 0, Decimal("0.00007"), 900, _at(D2, "01:00:00.5")),
    ("J11", 1, HAIKU, "ok", 200, 30, 15, 0, 0, Decimal("0.000105"), 2000, _at(D2, "02:00:01")),
    ("J12", 1, HAIKU, "refusal", 200, 40, 3, 0, 0, Decimal("0.000055"), 800,
     _at(D2, "03:00:00.5")),
    ("J15", 1, SONNET, "overloaded", 529, 0, 0, 0, 0, Decimal(0), 80, _at(D2, "05:00:00.1")),
    ("J15", 2, HAIKU, "ok", 200, 60, 20, 0, 0, Decimal("0.00016"), 1200, _at(D2, "05:00:01")),
]

JOB_IDS = {key: uuid.uuid5(uuid.NAMESPACE_URL, f"farm-report-test/{key}") for key in JOBS}


def _insert_known_rows(conn: Connection) -> None:
    for key, (queue, model, tenant, status, tin, tout, cw, cr, cost, unpriced, served,
              created, finished) in JOBS.items():
        conn.execute(text(
            "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, "
            "request, input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_read_input_tokens, cost_usd, cost_unknown, served_model, attempts, "
            "created_at, started_at, finished_at) VALUES (:id, :status, 'simple', :queue, "
            ":model, 'normal', :tenant, CAST(:request AS jsonb), :tin, :tout, :cw, :cr, "
            ":cost, :unpriced, :served, :attempts, :created, :started, :finished)"),
            {"id": JOB_IDS[key], "status": status, "queue": queue, "model": model,
             "tenant": tenant, "request": json.dumps({"prompt": key}), "tin": tin,
             "tout": tout, "cw": cw, "cr": cr, "cost": cost, "unpriced": unpriced,
             "served": served, "attempts": sum(1 for a in ATTEMPTS if a[0] == key),
             "created": created,
             "started": None if status in ("queued", "cancelled") else created,
             "finished": finished})
    for (key, number, model, outcome, http, tin, tout, cw, cr, cost, latency,
         started) in ATTEMPTS:
        conn.execute(text(
            "INSERT INTO attempts (job_id, attempt, queue, model, outcome, http_status, "
            "input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_read_input_tokens, cost_usd, latency_ms, started_at, finished_at) "
            "VALUES (:id, :n, :queue, :model, :outcome, :http, :tin, :tout, :cw, :cr, "
            ":cost, :latency, :started, :finished)"),
            {"id": JOB_IDS[key], "n": number, "queue": JOBS[key][0], "model": model,
             "outcome": outcome, "http": http, "tin": tin, "tout": tout, "cw": cw, "cr": cr,
             "cost": cost, "latency": latency, "started": started,
             "finished": started + timedelta(milliseconds=latency)})


def test_known_rows_are_consistent() -> None:
    """The fixture data obeys the store's accounting: a job's tokens and cost are the
    sums of its attempts' (a NULL cost makes the job's NULL), as attempts.record keeps them."""
    for key, job in JOBS.items():
        mine = [a for a in ATTEMPTS if a[0] == key]
        assert job[4:8] == tuple(sum(a[i] for a in mine) for i in range(5, 9)), key
        costs = [a[9] for a in mine]
        expected = None if not mine or None in costs else sum(costs, Decimal(0))
        assert job[8] == expected, key
        assert job[9] == (None in costs), key


# The views' and summary()'s results before 0004 (which rewrote cost_report) and at head
# must be the same numbers.
@pytest.fixture(scope="module", params=["0003", "head"])
def known_engine(request: pytest.FixtureRequest,
                 service_urls: tuple[str, str]) -> Iterator[Engine]:
    with fresh_database(service_urls[1], "farm_reports", request.param) as url:
        # a session time zone far from UTC: the views' days must still be UTC days
        engine = create_engine(url, poolclass=NullPool,
                               connect_args={"options": "-c TimeZone=Pacific/Auckland"})
        with engine.begin() as conn:
            _insert_known_rows(conn)
        yield engine
        engine.dispose()


def _rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "Pacific/Auckland"
        return [dict(r) for r in conn.execute(text(sql)).mappings()]


def _same(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Exact equality, floats (percentiles) to 1e-9; money must come back as Decimal."""
    assert [list(r) for r in actual] == [list(r) for r in expected]  # columns, in order

    def norm(row: dict[str, Any]) -> dict[str, Any]:
        return {k: round(v, 9) if isinstance(v, float) else v for k, v in row.items()}

    assert [norm(r) for r in actual] == [norm(r) for r in expected]
    for row in actual:
        for column in ("cost_usd", "error_rate"):
            if row.get(column) is not None:
                assert isinstance(row[column], Decimal), (column, row)


def _job_row(day: date, queue: str, model: str, tenant: str, jobs: int, succeeded: int,
             failed: int, pending: int, tokens: tuple[int, int, int, int],
             cost: str | None, unpriced: int, p50: float | None, p95: float | None,
             ) -> dict[str, Any]:
    return {
        "day": day, "queue": queue, "model": model, "tenant": tenant, "jobs": jobs,
        "succeeded": succeeded, "failed": failed, "pending": pending,
        "input_tokens": tokens[0], "output_tokens": tokens[1],
        "cache_creation_input_tokens": tokens[2], "cache_read_input_tokens": tokens[3],
        "cost_usd": None if cost is None else Decimal(cost), "unpriced_jobs": unpriced,
        "p50_turnaround_s": p50, "p95_turnaround_s": p95,
    }


def test_cost_report_jobs_exact(known_engine: Engine) -> None:
    rows = _rows(known_engine,
                 "SELECT * FROM cost_report_jobs ORDER BY day, queue, model, tenant")
    _same(rows, [
        # J1 succeeded, J2 failed; turnarounds 2 s and 10 s
        _job_row(D1, "haiku-simple", HAIKU, "acme", 2, 1, 1, 0, (100, 50, 10, 20),
                 "0.0003645", 0, 6.0, 9.6),
        # J3 dead (60 s), J4 queued at 23:30 UTC: still D1; no finish, no turnaround
        _job_row(D1, "haiku-simple", HAIKU, "globex", 2, 0, 1, 1, (0, 0, 0, 0),
                 "0", 0, 60.0, 60.0),
        # J5 on a model with no price: cost NULL (not 0), counted as unpriced
        _job_row(D1, "sonnet-complex", OPUS, "acme", 1, 1, 0, 0, (1000, 400, 0, 300),
                 None, 1, 5.0, 5.0),
        # J6 cancelled (its cancellation at 1 s counts as a turnaround) and J7 (4 s)
        _job_row(D1, "sonnet-complex", SONNET, "acme", 2, 1, 0, 0, (200, 100, 50, 0),
                 "0.0022875", 0, 2.5, 3.85),
        # J8 running, J16 failed (2 s), J13 created 23:59 (120 s)
        _job_row(D1, "sonnet-complex", SONNET, "globex", 3, 1, 1, 1, (500, 250, 0, 0),
                 "0.00525", 0, 61.0, 114.1),
        # J14 queued: no cost yet (NULL), no turnaround
        _job_row(D2, "batch", HAIKU, "initech", 1, 0, 0, 1, (0, 0, 0, 0),
                 None, 0, None, None),
        # J9, J10, J11: 1, 3, 6 s
        _job_row(D2, "haiku-simple", HAIKU, "acme", 3, 3, 0, 0, (60, 30, 0, 0),
                 "0.00021", 0, 3.0, 5.7),
        # J12 refused: failed, charged
        _job_row(D2, "haiku-simple", HAIKU, "globex", 1, 0, 1, 0, (40, 3, 0, 0),
                 "0.000055", 0, 2.0, 2.0),
        # J15: grouped under the model it asked for, though haiku served it
        _job_row(D2, "sonnet-complex", SONNET, "acme", 1, 1, 0, 0, (60, 20, 0, 0),
                 "0.00016", 0, 3.0, 3.0),
    ])


def _attempt_row(day: date, queue: str, model: str, calls: int, errors: int,
                 error_rate: str, tokens: tuple[int, int], cost: str | None,
                 p50: float, p95: float) -> dict[str, Any]:
    return {
        "day": day, "queue": queue, "model": model, "calls": calls, "errors": errors,
        "error_rate": Decimal(error_rate), "input_tokens": tokens[0],
        "output_tokens": tokens[1], "cost_usd": None if cost is None else Decimal(cost),
        "p50_latency_ms": p50, "p95_latency_ms": p95,
    }


# per day (of started_at) x queue x model; latencies of all calls, failed ones included
ATTEMPT_ROWS = [
    # J1 ok 1500; J2 429 200, 400 100; J3 timeouts 30000, 30000
    _attempt_row(D1, "haiku-simple", HAIKU, 5, 4, "0.8000", (100, 50), "0.0003645",
                 1500.0, 30000.0),
    _attempt_row(D1, "sonnet-complex", OPUS, 1, 0, "0.0000", (1000, 400), None,
                 4000.0, 4000.0),
    # J7 529 50, ok 3000; J16 500 650: 2/3 rounded to 4 places
    _attempt_row(D1, "sonnet-complex", SONNET, 3, 2, "0.6667", (200, 100), "0.0022875",
                 650.0, 2765.0),
    # J9 700, J10 900, J11 2000, J12 refusal 800 (an error)
    _attempt_row(D2, "haiku-simple", HAIKU, 4, 1, "0.2500", (100, 33), "0.000265",
                 850.0, 1835.0),
    # J15's second call, on the fallback model
    _attempt_row(D2, "sonnet-complex", HAIKU, 1, 0, "0.0000", (60, 20), "0.00016",
                 1200.0, 1200.0),
    # J13's call (its job was created on D1) and J15's first, overloaded, call
    _attempt_row(D2, "sonnet-complex", SONNET, 2, 1, "0.5000", (500, 250), "0.00525",
                 1290.0, 2379.0),
]


def test_cost_report_attempts_exact(known_engine: Engine) -> None:
    rows = _rows(known_engine,
                 "SELECT * FROM cost_report_attempts ORDER BY day, queue, model")
    _same(rows, ATTEMPT_ROWS)


def test_cost_report_exact(known_engine: Engine) -> None:
    rows = _rows(known_engine, "SELECT * FROM cost_report ORDER BY day, queue, model")
    # jobs: created that UTC day on that queue for that model (the model asked for);
    # the rest is cost_report_attempts. A day x queue x model without calls has no row
    # (J14 on batch), and calls on a model no job asked for show 0 jobs (J15's fallback).
    jobs = [4, 1, 5, 4, 0, 1]
    expected = []
    for row, n in zip(ATTEMPT_ROWS, jobs, strict=True):
        expected.append({**{k: row[k] for k in ("day", "queue", "model")}, "jobs": n,
                         **{k: v for k, v in row.items() if k not in ("day", "queue", "model")}})
    _same(rows, expected)
    assert all(isinstance(r["jobs"], Decimal) for r in rows)  # numeric: sum() made it so
    # and a day filter gives that day's rows, the same numbers
    with known_engine.connect() as conn:
        def where(condition: str, day: date) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(text(
                f"SELECT * FROM cost_report WHERE {condition} ORDER BY day, queue, model"),
                {"d": day}).mappings()]

        _same(where("day = :d", D1), expected[:3])
        _same(where("day = :d", D2), expected[3:])
        _same(where("day >= :d", D2 - timedelta(days=7)), expected)
        _same(where("day > :d", D1), expected[3:])


def _report_row(queue: str, model: str, jobs: int, succeeded: int, failed: int,
                cancelled: int, pending: int, tokens: tuple[int, int, int], cost: str | None,
                unpriced: int, calls: int, errors: int, p50: float | None, p95: float | None,
                ) -> ReportRow:
    return ReportRow(
        queue=queue, model=model, jobs=jobs, succeeded=succeeded, failed=failed,
        cancelled=cancelled, pending=pending, input_tokens=tokens[0],
        output_tokens=tokens[1], cache_tokens=tokens[2],
        cost_usd=None if cost is None else Decimal(cost),
        unpriced_jobs=unpriced, calls=calls, errors=errors, p50_ms=p50, p95_ms=p95,
    )


def _same_report(actual: list[ReportRow], expected: list[ReportRow]) -> None:
    _same([r.model_dump() for r in actual], [r.model_dump() for r in expected])


def test_summary_exact(known_engine: Engine) -> None:
    # per queue and served model (the model asked for while none served); calls are
    # the attempts of those jobs per queue and the attempt's model; percentiles over
    # successful calls only (unlike the views, which take every call)
    _same_report(summary(known_engine, since=_at(D1, "00:00:00")), [
        _report_row("batch", HAIKU, 1, 0, 0, 0, 1, (0, 0, 0), None, 0, 0, 0, None, None),
        # J1-J4, J9-J12; ok latencies 700, 900, 1500, 2000
        _report_row("haiku-simple", HAIKU, 8, 4, 3, 0, 1, (200, 83, 30), "0.0006295", 0,
                    9, 5, 1200.0, 1925.0),
        # J15 served by haiku: its overloaded sonnet call counts in the sonnet row
        _report_row("sonnet-complex", HAIKU, 1, 1, 0, 0, 0, (60, 20, 0), "0.00016", 0,
                    1, 0, 1200.0, 1200.0),
        _report_row("sonnet-complex", OPUS, 1, 1, 0, 0, 0, (1000, 400, 300), None, 1,
                    1, 0, 4000.0, 4000.0),
        # J6-J8, J13, J16; calls J7 x2, J16, J13, J15's first; ok latencies 2500, 3000
        _report_row("sonnet-complex", SONNET, 5, 2, 1, 1, 1, (700, 350, 50), "0.0075375", 0,
                    5, 3, 2750.0, 2975.0),
    ])
    # since 12:00 UTC on D1: J1, J2 and J5 are out (J3, created at 12:00:00, is in)
    _same_report(summary(known_engine, since=_at(D1, "12:00:00")), [
        _report_row("batch", HAIKU, 1, 0, 0, 0, 1, (0, 0, 0), None, 0, 0, 0, None, None),
        _report_row("haiku-simple", HAIKU, 6, 3, 2, 0, 1, (100, 33, 0), "0.000265", 0,
                    6, 3, 900.0, 1890.0),
        _report_row("sonnet-complex", HAIKU, 1, 1, 0, 0, 0, (60, 20, 0), "0.00016", 0,
                    1, 0, 1200.0, 1200.0),
        _report_row("sonnet-complex", SONNET, 5, 2, 1, 1, 1, (700, 350, 50), "0.0075375", 0,
                    5, 3, 2750.0, 2975.0),
    ])
    assert summary(known_engine, since=_at(D2, "06:00:00")) == []
    # every job is in exactly one of ok, failed, cancelled and pending (J6 is cancelled)
    for row in summary(known_engine):
        assert row.succeeded + row.failed + row.cancelled + row.pending == row.jobs, row
    # the default is every job
    assert summary(known_engine) == summary(known_engine, since=_at(D1, "00:00:00"))


# --- plans at 200k rows -----------------------------------------------------------------

BIG_JOBS, BIG_DAYS = 200_000, 200
# the last of the 200 days is today, so that the README's queries (the last week, this
# month) select recent days as they would in a running farm
BIG_START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
    days=BIG_DAYS - 1)

FILL_JOBS = text("""
    INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, request,
                      input_tokens, output_tokens, cost_usd, created_at, finished_at)
    SELECT lpad(to_hex(g), 32, '0')::uuid,
           (ARRAY['succeeded', 'failed', 'dead', 'queued', 'cancelled'])[1 + g % 5],
           'simple', 'q' || g % 3, 'm' || g % 2, 'normal', 't' || g % 4, '{}'::jsonb,
           g % 100, g % 50, (g % 7) / 1000.0,
           CAST(:start AS timestamptz) + g * (:days * interval '1 day' / :n),
           CAST(:start AS timestamptz) + g * (:days * interval '1 day' / :n)
               + interval '3 seconds'
    FROM generate_series(0, :n - 1) AS g
""")
FILL_ATTEMPTS = text("""
    INSERT INTO attempts (job_id, attempt, queue, model, outcome, input_tokens,
                          output_tokens, cost_usd, latency_ms, started_at, finished_at)
    SELECT id, 1, queue, model, CASE WHEN status = 'succeeded' THEN 'ok' ELSE 'timeout' END,
           input_tokens, output_tokens, cost_usd, 100 + length(id::text),
           created_at + interval '1 second', created_at + interval '2 seconds'
    FROM jobs
""")


@pytest.fixture(scope="module")
def big_engine(service_urls: tuple[str, str]) -> Iterator[Engine]:
    # loaded before 0004, then migrated: that builds its indexes on a full table (faster
    # than maintaining them row by row, and how an existing farm gets them)
    with fresh_database(service_urls[1], "farm_reports", "0003") as url:
        engine = create_engine(url, poolclass=NullPool)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(FILL_JOBS, {"start": BIG_START, "days": BIG_DAYS, "n": BIG_JOBS})
            conn.execute(FILL_ATTEMPTS)
        loaded = time.perf_counter()
        command.upgrade(alembic_config(url), "head")
        migrated = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE jobs"))
            conn.execute(text("ANALYZE attempts"))
            version = conn.execute(text("SHOW server_version")).scalar()
        print(f"\nPostgreSQL {version}: {BIG_JOBS} jobs and attempts over {BIG_DAYS} days: "
              f"loaded in {loaded - started:.1f} s, migrated to head in "
              f"{migrated - loaded:.1f} s, analyzed in {time.perf_counter() - migrated:.1f} s")
        yield engine
        engine.dispose()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _describe(node: dict[str, Any]) -> str:
    kind = str(node["Node Type"])
    if node.get("Parallel Aware"):
        kind = f"Parallel {kind}"
    if "Strategy" in node and node["Strategy"] != "Plain":
        kind += f" ({node['Strategy']})"
    if "Index Name" in node:
        kind += f" using {node['Index Name']}"
    if "Relation Name" in node:
        kind += f" on {node['Relation Name']}"
    return kind


DAY = (BIG_START + timedelta(days=100)).date()


@pytest.mark.parametrize(("query", "indexes"), [
    (f"SELECT * FROM cost_report_jobs WHERE day = '{DAY}'", {"ix_jobs_created_day"}),
    (f"SELECT * FROM cost_report_attempts WHERE day = '{DAY}'", {"ix_attempts_started_day"}),
    (f"SELECT * FROM cost_report WHERE day = '{DAY}'",
     {"ix_jobs_created_day", "ix_attempts_started_day"}),
    # the README's queries, verbatim: a week of cost_report, this month's cost per tenant
    ("SELECT day, queue, model, jobs, calls, error_rate, cost_usd, p95_latency_ms "
     "FROM cost_report WHERE day >= current_date - 7 ORDER BY day, queue",
     {"ix_jobs_created_day", "ix_attempts_started_day"}),
    ("SELECT tenant, sum(cost_usd) FROM cost_report_jobs "
     "WHERE day >= date_trunc('month', now()) GROUP BY tenant",
     {"ix_jobs_created_day"}),
], ids=["jobs-day", "attempts-day", "report-day", "readme-report-week",
        "readme-jobs-month-by-tenant"])
def test_a_day_filter_on_the_views_is_an_index_scan(
        big_engine: Engine, query: str, indexes: set[str]) -> None:
    with big_engine.connect() as conn:
        plan = conn.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}")).scalar_one()
        assert conn.execute(text(f"SELECT count(*) FROM ({query}) q")).scalar_one() > 0
    top = plan[0]
    nodes = list(_nodes(top["Plan"]))
    jit = top.get("JIT", {}).get("Timing", {}).get("Total")
    print(f"\n{query}\n  nodes: " + ", ".join(_describe(n) for n in nodes)
          + f"\n  planning {top['Planning Time']:.1f} ms, execution "
          f"{top['Execution Time']:.1f} ms" + ("" if jit is None else f" (JIT {jit:.1f} ms)"))
    seq = [n for n in nodes if n["Node Type"] == "Seq Scan"
           and n.get("Relation Name") in ("jobs", "attempts")]
    assert seq == [], "a sequential scan of a big table"
    assert indexes <= {n.get("Index Name") for n in nodes}


def test_a_day_of_the_big_table_is_counted_right(big_engine: Engine) -> None:
    """The plans above read the right rows: a day is 1000 jobs and 1000 calls."""
    per_day = BIG_JOBS // BIG_DAYS
    with big_engine.connect() as conn:
        jobs = conn.execute(text("SELECT sum(jobs) FROM cost_report_jobs WHERE day = :d"),
                            {"d": DAY}).scalar_one()
        report = conn.execute(text(
            "SELECT sum(jobs), sum(calls) FROM cost_report WHERE day = :d"), {"d": DAY}).one()
    assert jobs == per_day
    assert tuple(report) == (per_day, per_day)
