"""The farm's Postgres connections: a small pool of psycopg connections, without SQLAlchemy.

Every statement a worker runs and the Python API's job statements go through a
``Database``; SQLAlchemy is kept for the schema (``farm.store.schema``), Alembic and the SQL
reports, which a worker never imports: its imports take 12.4 MB less without SQLAlchemy and
its PostgreSQL dialect (ops/bench_imports.py).

- ``begin()``: a connection in a transaction, committed when the block ends, rolled back if
  it raises; ``connect()``: a connection whose statements each commit alone (autocommit).
  A statement that stands alone runs on ``connect()``: ``begin()`` costs a BEGIN and a
  COMMIT round trip more, for statements that must commit together.
- Rows are named tuples (``row.id``, ``row[0]``, unpacking); ``dicts()`` gives mappings.
- Connections open as threads need them, up to ``size``, and are kept (an open-and-close
  per checkout costs Postgres a backend and a login). A thread that finds all ``size`` in
  use waits up to ``timeout_s``, then ``PoolTimeout`` (an ``OperationalError``: the store's
  retry rides it out like an outage). A connection that failed is closed, never reused.
- ``ping_s``: an idle connection older than this is checked with a round trip before use
  (a long-lived client outliving a Postgres restart); None, as in a worker: a dead one
  raises on use and the caller's retry takes a fresh one.
- Errors are psycopg's: Postgres's own message, with neither the statement nor its
  parameters (prompts, responses) appended.
- ``compact()``: a statement's layout without its indentation. psycopg caches how it
  converts a statement of at most 4096 bytes (and 50 parameters) and converts a longer one
  again on every call; tests/unit/test_statements.py keeps every worker statement within.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, namedtuple_row

Params = Mapping[str, Any] | Sequence[Any] | None


def compact(sql: str) -> str:
    """``sql`` with each line's leading and trailing blanks and the empty lines dropped: the
    same statement in fewer bytes (a line break still ends a ``--`` comment)."""
    stripped = (line.strip() for line in sql.splitlines())
    return "\n".join(line for line in stripped if line)


class PoolTimeout(psycopg.OperationalError):
    """No pooled connection became free in time."""


def dsn_of(url: str) -> str:
    """A libpq URL from the farm's database URL (``postgresql+psycopg://`` is SQLAlchemy's)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


class Database:
    def __init__(self, url: str, *, size: int = 10, timeout_s: float = 30.0,
                 ping_s: float | None = 1.0, recycle_s: float = 1800.0,
                 connect_timeout_s: int = 10) -> None:
        if size < 1:
            raise ValueError(f"a Database needs at least one connection, not {size}")
        self._dsn = dsn_of(url)
        self.size = size
        self.timeout_s = timeout_s
        self._ping_s = ping_s
        self._recycle_s = recycle_s
        self.connect_timeout_s = connect_timeout_s
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[tuple[psycopg.Connection[Any], float, float]] = []  # conn, opened, used
        self._opened: dict[int, float] = {}  # id(conn): when it was opened

    # -- checkout and checkin --------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._dsn, autocommit=True, row_factory=namedtuple_row,
                               connect_timeout=self.connect_timeout_s)

    def checkout(self) -> psycopg.Connection[Any]:
        """A connection of the pool (autocommit); give it back with ``checkin``."""
        if not self._slots.acquire(timeout=self.timeout_s):
            raise PoolTimeout(f"no Postgres connection free in {self.timeout_s:.0f}s "
                              f"({self.size} in use)")
        try:
            now = time.monotonic()
            while True:
                with self._lock:
                    item = self._idle.pop() if self._idle else None
                if item is None:
                    conn = self._connect()
                    self._opened[id(conn)] = now
                    return conn
                conn, opened, used = item
                if conn.closed or now - opened > self._recycle_s or not self._alive(conn, used,
                                                                                     now):
                    self._discard(conn)
                    continue
                return conn
        except BaseException:
            self._slots.release()
            raise

    def _alive(self, conn: psycopg.Connection[Any], used: float, now: float) -> bool:
        if self._ping_s is None or now - used < self._ping_s:
            return True
        try:
            conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        self._opened.pop(id(conn), None)
        with suppress(psycopg.Error):
            conn.close()

    def checkin(self, conn: psycopg.Connection[Any], *, broken: bool = False) -> None:
        """Give a connection back; ``broken`` (or failed, or left in a transaction): closed."""
        try:
            if broken or conn.closed or conn.broken or (
                    conn.info.transaction_status != TransactionStatus.IDLE):
                self._discard(conn)
            else:
                with self._lock:
                    self._idle.append((conn, self._opened.get(id(conn), 0.0), time.monotonic()))
        finally:
            self._slots.release()

    # -- use ---------------------------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection whose statements each commit alone."""
        conn = self.checkout()
        try:
            yield conn
        except psycopg.OperationalError:
            self.checkin(conn, broken=True)
            raise
        except BaseException:
            self.checkin(conn)
            raise
        self.checkin(conn)

    @contextmanager
    def begin(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in one transaction: committed at the end of the block, rolled
        back if it raises."""
        with self.connect() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        """Close the idle connections (those checked out close when given back)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _, _ in idle:
            self._discard(conn)


def scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the first row, or None when there is no row."""
    row = cursor.fetchone()
    return None if row is None else row[0]


def scalars(cursor: psycopg.Cursor[Any]) -> list[Any]:
    """The first column of every row."""
    return [row[0] for row in cursor]


def dicts(conn: psycopg.Connection[Any], sql: str, params: Params = None
          ) -> list[dict[str, Any]]:
    """Every row of a query as a dict."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(sql, params).fetchall()


def dict_one(conn: psycopg.Connection[Any], sql: str, params: Params = None
             ) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(sql, params).fetchone()
