"""farm.store.jobs.fetch_one rides out a Postgres outage for the caller's patience: a
broken connection, and a pool with no connection free in time (all stuck on the outage: a
cut network left 55 of 100 results unrecorded before this was handled)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from farm.store import jobs as store


class Flaky:
    """An engine whose first checkouts fail as given, then hands out a working one."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.checkouts = 0

    def raw_connection(self) -> Any:
        self.checkouts += 1
        if self.failures:
            raise self.failures.pop(0)
        return Raw()


class Raw:
    def cursor(self) -> Any:
        return self

    def execute(self, sql: str, params: dict[str, Any]) -> None:
        self.params = params

    def fetchone(self) -> tuple[Any, ...]:
        return ("ok",)

    def close(self) -> None:
        pass

    def commit(self) -> None:
        pass


def test_an_exhausted_pool_or_a_broken_connection_is_waited_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    engine = Flaky(sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"),
                   psycopg.OperationalError("No route to host"))
    assert store.fetch_one(engine, "select 1", {}, patience_s=60) == ("ok",)  # type: ignore[arg-type]
    assert engine.checkouts == 3


def test_past_its_patience_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    engine = Flaky(*[sa_exc.TimeoutError("pool")] * 5)
    with pytest.raises(store.DatabaseUnavailable, match="unreachable for 0s: TimeoutError"):
        store.fetch_one(engine, "select 1", {}, patience_s=0)  # type: ignore[arg-type]
