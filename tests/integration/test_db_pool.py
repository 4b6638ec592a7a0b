"""farm.store.db.Database on a real Postgres: connections kept and reused, the cap and its
timeout, transactions committed or rolled back, and a connection that failed or was left
in a transaction never handed out again."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from farm.store.db import Database, PoolTimeout, scalar


@pytest.fixture
def probe(db: Database) -> Iterator[str]:
    """A scratch table of this test's own."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS db_pool_probe (x int)")
        conn.execute("TRUNCATE db_pool_probe")
    yield "db_pool_probe"
    with db.connect() as conn:
        conn.execute("DROP TABLE db_pool_probe")


def pid(db: Database) -> int:
    with db.connect() as conn:
        return int(scalar(conn.execute("SELECT pg_backend_pid()")))


def terminate(db: Database, backend: int) -> None:
    with db.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (backend,))


def test_a_connection_given_back_is_used_again(database_url: str) -> None:
    pool = Database(database_url, size=3)
    try:
        assert len({pid(pool) for _ in range(20)}) == 1  # one thread: one backend, kept
    finally:
        pool.close()


def test_the_cap_waits_then_says_so(database_url: str) -> None:
    pool = Database(database_url, size=2, timeout_s=0.3)
    held = [pool.checkout(), pool.checkout()]
    try:
        with pytest.raises(PoolTimeout, match=r"no Postgres connection free in 0s \(2 in use\)"):
            pool.checkout()
        assert issubclass(PoolTimeout, psycopg.OperationalError)  # the store's retry rides it
        # a connection given back meanwhile serves the thread that waits
        threading.Timer(0.1, pool.checkin, (held.pop(),)).start()
        held.append(pool.checkout())
    finally:
        for conn in held:
            pool.checkin(conn)
        pool.close()


def test_begin_commits_at_the_end_and_rolls_back_on_error(db: Database, probe: str) -> None:
    with db.begin() as conn:
        conn.execute(f"INSERT INTO {probe} VALUES (1)")
    with pytest.raises(RuntimeError), db.begin() as conn:
        conn.execute(f"INSERT INTO {probe} VALUES (2)")
        raise RuntimeError("after the insert")
    with db.connect() as conn:
        assert [r.x for r in conn.execute(f"SELECT x FROM {probe}")] == [1]


def test_a_failed_connection_is_not_handed_out_again(database_url: str) -> None:
    pool, admin = Database(database_url, size=1, ping_s=None), Database(database_url, size=1)
    try:
        first = pid(pool)
        terminate(admin, first)
        with pytest.raises(psycopg.OperationalError), pool.connect() as conn:
            conn.execute("SELECT 1")
        assert pid(pool) != first  # the broken one was closed; a new one opened
    finally:
        pool.close()
        admin.close()


def test_an_idle_connection_is_checked_before_use(database_url: str) -> None:
    """With ping_s (a long-lived client outliving a Postgres restart), an idle connection
    that died is found at checkout and replaced: the caller's statement succeeds."""
    pool, admin = Database(database_url, size=1, ping_s=0.0), Database(database_url, size=1)
    try:
        first = pid(pool)
        terminate(admin, first)
        assert pid(pool) != first
    finally:
        pool.close()
        admin.close()


def test_a_connection_left_in_a_transaction_is_closed(database_url: str) -> None:
    pool = Database(database_url, size=1)
    try:
        conn = pool.checkout()
        first = int(scalar(conn.execute("SELECT pg_backend_pid()")))
        conn.execute("BEGIN")
        pool.checkin(conn)  # its transaction is not the next user's
        assert conn.closed and pid(pool) != first
    finally:
        pool.close()
