"""farm.store.jobs.fetch_one rides out a Postgres outage for the caller's patience: a
broken connection, and a pool with no connection free in time (all stuck on the outage: a
cut network left 55 of 100 results unrecorded before this was handled)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from farm.store import jobs as store
from farm.store.db import Database, PoolTimeout


class Flaky:
    """A Database whose first checkouts fail as given, then hands out a working connection;
    it counts the connections given back as broken (its connect() is Database's own, on
    these checkouts)."""

    connect = Database.connect

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.checkouts = 0
        self.broken = 0

    def checkout(self) -> Any:
        self.checkouts += 1
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, PoolTimeout):
                raise failure
            return Raw(failure)
        return Raw(None)

    def checkin(self, conn: Any, *, broken: bool = False) -> None:
        self.broken += broken


class Raw:
    def __init__(self, failure: BaseException | None) -> None:
        self.failure = failure

    def cursor(self, **kwargs: Any) -> Any:
        return self

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: dict[str, Any]) -> None:
        if self.failure is not None:
            raise self.failure

    def fetchone(self) -> tuple[Any, ...]:
        return ("ok",)


def test_an_exhausted_pool_or_a_broken_connection_is_waited_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    db = Flaky(PoolTimeout("no Postgres connection free in 30s (10 in use)"),
               psycopg.OperationalError("No route to host"))
    assert store.fetch_one(db, "select 1", {}, patience_s=60) == ("ok",)  # type: ignore[arg-type]
    assert db.checkouts == 3
    assert db.broken == 1  # the connection that failed is not reused


def test_past_its_patience_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    db = Flaky(*[PoolTimeout("pool")] * 5)
    with pytest.raises(store.DatabaseUnavailable, match="unreachable for 0s: PoolTimeout"):
        store.fetch_one(db, "select 1", {}, patience_s=0)  # type: ignore[arg-type]


def test_the_jobs_columns_are_the_schemas() -> None:
    """farm.store.jobs lists the columns a caller may read without importing the schema
    (SQLAlchemy, which a worker never loads): the same, in the same order."""
    from farm.store.schema import jobs

    assert tuple(column.name for column in jobs.c) == store.JOB_COLUMNS


def test_a_column_the_jobs_table_lacks_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="jobs has no column 'id; drop table jobs'"):
        store.insert_sql(["id; drop table jobs"])
