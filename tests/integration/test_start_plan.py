"""A statement on one job (its start, deferral, give-back, memo hit, kill, cancel) finds the row by
the primary key, whatever the statistics say.

`ix_jobs_active` (status, partial: queued and running): its statistics say it is empty when
the table was last analyzed with nothing pending, and keep saying so while a backlog builds
up. A status test that implies the index's predicate let the planner pick it and filter
every pending row for the one id: a start with 4,000 jobs queued (measured on a bench
database) took 3 ms of Postgres CPU and 1,550 buffers instead of 0.03 ms and 6. The test
builds that state and reads the plan Postgres chooses."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, text

from farm.memo.store import HIT_SQL
from farm.store.jobs import CANCEL_SQL, DEFER_SQL, KILL_SQL, START_SQL, UNSTART_SQL
from farm.store.schema import make_engine

FINISHED = 40_000
BACKLOG = 2000


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    """A transaction on a table of many finished jobs, analyzed while nothing was pending
    (what autovacuum records for an idle farm), then a backlog of queued jobs: what a farm
    meets when a batch of work arrives. Rolled back afterwards, statistics too."""
    engine = make_engine(database_url)
    insert = text(
        "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, request) "
        "SELECT gen_random_uuid(), :status, 'simple', 'haiku-simple', 'claude-haiku-4-5', "
        "'normal', 'plan-test', CAST(:request AS jsonb) FROM generate_series(1, :n)")
    request = json.dumps({"prompt": "x"})
    try:
        with engine.connect() as made:
            made.execute(insert, {"status": "succeeded", "request": request, "n": FINISHED})
            made.execute(text("ANALYZE jobs"))
            made.execute(insert, {"status": "queued", "request": request, "n": BACKLOG})
            made.execute(insert, {"status": "running", "request": request, "n": BACKLOG})
            yield made
            made.rollback()
    finally:
        engine.dispose()


def _scans(conn: Connection, sql: str, params: dict[str, Any]) -> list[str]:
    """The indexes the plan of ``sql`` (the farm's SQL, in psycopg's parameter style) scans
    jobs by."""
    row = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
    assert row is not None
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "jobs" and "Scan" in node["Node Type"]:
            found.append(str(node.get("Index Name", node["Node Type"])))
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    return found


def _pending(conn: Connection, status: str = "queued") -> uuid.UUID:
    row = conn.execute(text("SELECT id FROM jobs WHERE tenant = 'plan-test' "
                            "AND status = :status LIMIT 1"), {"status": status}).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def test_a_start_looks_its_job_up_by_the_primary_key(conn: Connection) -> None:
    params = {"job_id": _pending(conn), "lease_s": 60}
    assert _scans(conn, START_SQL, params) == ["jobs_pkey"]


def test_a_deferral_looks_its_job_up_by_the_primary_key(conn: Connection) -> None:
    params = {"id": _pending(conn), "s": 5.0, "reason": "held: test"}
    assert _scans(conn, DEFER_SQL, params) == ["jobs_pkey"]


def test_a_give_back_looks_its_job_up_by_the_primary_key(conn: Connection) -> None:
    params = {"job_id": _pending(conn, "running"), "attempt": 1, "wait_s": 1.0,
              "reason": "test"}
    assert _scans(conn, UNSTART_SQL, params) == ["jobs_pkey"]


def test_a_memo_hit_looks_its_job_up_by_the_primary_key(conn: Connection) -> None:
    params = {"job_id": _pending(conn, "running"), "attempt": 1, "response_text": "x",
              "stop_reason": "end_turn", "served_model": "m", "saved_usd": 0, "key": "k"}
    assert _scans(conn, HIT_SQL, params) == ["jobs_pkey"]


def test_a_kill_looks_its_job_up_by_the_primary_key(conn: Connection) -> None:
    params = {"id": _pending(conn, "running"), "error": "poison", "uncount": 0}
    assert _scans(conn, KILL_SQL, params) == ["jobs_pkey"]


def test_a_cancel_looks_its_job_up_by_the_primary_key(conn: Connection) -> None:
    assert _scans(conn, CANCEL_SQL, {"id": _pending(conn)}) == ["jobs_pkey"]
