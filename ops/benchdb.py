"""The benchmarks' own database, made anew for each `make bench` (and `ops/bench_turns.py`)
on the farm's Postgres server.

Before, a bench wrote its jobs into the farm's own database: after a day of benches on this
machine it held 251,900 jobs (188 MB) and 250,756 attempts, every later run inserting into
those indexes and waiting out autovacuum passes over them, and every bench job showed in
`farm jobs` and in the cost reports. Now each run starts from empty tables in a database of
its own, `farm_bench` beside the farm's (the configured server, or the embedded one), dropped
and created again at the start (the role needs CREATEDB on a server of your own).
"""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

NAME = "farm_bench"


def fresh(url: str) -> str:
    """``url`` with its database replaced by an empty ``farm_bench`` (dropped first if it
    exists; the caller migrates it). SystemExit, saying why, if the server refuses."""
    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres")
    try:
        with psycopg.connect(admin.render_as_string(hide_password=False),
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{NAME}"')
    except psycopg.Error as exc:
        raise SystemExit(f"bench: could not make its database {NAME!r} on "
                         f"{parsed.host}:{parsed.port} ({type(exc).__name__}: "
                         f"{str(exc).strip()}); the role needs CREATEDB") from None
    return parsed.set(database=NAME).render_as_string(hide_password=False)
