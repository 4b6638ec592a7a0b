"""Schema migrations (Alembic), configured from settings: `farm migrate`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from farm.services import resolve_urls
from farm.settings import Settings, normalize_database_url

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def current_revision(database_url: str) -> str | None:
    """The revision the database is at (None: no schema yet)."""
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def upgrade(settings: Settings, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database to `revision`; returns the revisions before and after."""
    url = resolve_urls(settings).database_url
    before = current_revision(url)
    command.upgrade(alembic_config(url), revision)
    return before, current_revision(url)


def describe(before: str | None, after: str | None, head: str | None) -> str:
    """What an upgrade did, in one line: "already at head 0004", "0003 -> 0004 (head)"."""
    if before == after:
        where = f"head {after}" if after == head else str(after)
        return f"database schema already at {where}: nothing to do"
    at = f"{after} (head)" if after == head else str(after)
    if before is None:
        return f"created the database schema: none -> {at}"
    return f"upgraded the database schema: {before} -> {at}"


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str, revision: str | None = None
                   ) -> Iterator[str]:
    """A new database named ``prefix``_<random> on the server of ``server_url``, migrated to
    ``revision`` if given; its URL. Dropped afterwards, whatever connections are left (for
    tests and benchmarks, which must not touch the farm's own database)."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(normalize_database_url(server_url))
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        if revision is not None:
            command.upgrade(alembic_config(url), revision)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
