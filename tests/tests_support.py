"""Small helpers shared by tests (importable: tests/ is on sys.path via rootdir conftest)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from farm.services import free_port

__all__ = ["free_port", "fresh_database", "random_headers", "wait_port"]


def wait_port(port: int, timeout: float = 20.0) -> None:
    from farm.services import wait_port as listening

    if not listening(port, timeout):
        raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def fresh_database(server_url: str, prefix: str, revision: str | None = None
                   ) -> Iterator[str]:
    """A new database on the test server (migrated to `revision`, if given); its URL.
    Dropped afterwards, whatever connections are left."""
    import psycopg
    from sqlalchemy.engine import make_url

    from farm.settings import normalize_database_url

    server = make_url(normalize_database_url(server_url))
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        if revision is not None:
            from alembic import command

            from farm.store.migrate import alembic_config

            command.upgrade(alembic_config(url), revision)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def random_headers(rng: random.Random, *, otpm: int = 6_000) -> dict[str, str]:
    """Random anthropic-ratelimit-* headers: limits and remainders, each present or not."""
    headers: dict[str, str] = {}
    for name, limit in (("requests", 20), ("input-tokens", 30_000), ("output-tokens", otpm)):
        if rng.random() < 0.5:
            headers[f"anthropic-ratelimit-{name}-limit"] = str(rng.choice([limit, limit * 2]))
        if rng.random() < 0.5:
            left = rng.randint(0, limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(
                left if name == "requests" else left // 1000 * 1000)
    return headers
