"""Alembic migrations against a real Postgres: the models match head, and every revision
upgrades and downgrades cleanly (in a database of this module's own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex

from farm.store.migrate import alembic_config
from farm.store.schema import metadata
from tests_support import fresh_database

# What the farm creates in schema public; alembic's own table is not the farm's.
ALEMBIC_OWN = {"alembic_version", "alembic_version_pkc"}


@pytest.fixture(scope="module")
def empty_url(service_urls: tuple[str, str]) -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    with fresh_database(service_urls[1], "farm_migrations") as url:
        yield url


@pytest.fixture(scope="module")
def engine(empty_url: str) -> Iterator[Engine]:
    eng = create_engine(empty_url, poolclass=NullPool)
    yield eng
    eng.dispose()


@pytest.fixture
def config(empty_url: str, engine: Engine) -> Iterator[Config]:
    """Alembic at base before and after each test: tests share the database."""
    cfg = alembic_config(empty_url)
    command.downgrade(cfg, "base")
    yield cfg
    command.downgrade(cfg, "base")


def _revisions(cfg: Config) -> list[str]:
    """Revision ids from the first to head (the history is linear)."""
    script = ScriptDirectory.from_config(cfg)
    assert len(script.get_heads()) == 1, "more than one head: merge them"
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _model_diffs(conn: Connection) -> list[Any]:
    """alembic autogenerate's differences between the live schema and the models."""
    context = MigrationContext.configure(conn, opts={
        "compare_type": True, "compare_server_default": True,
    })
    diffs: list[Any] = compare_metadata(context, metadata)
    return diffs


def _index_definition_diffs(conn: Connection) -> list[tuple[str, str | None, str]]:
    """compare_metadata compares an index's columns and expressions, not a partial index's
    WHERE (alembic's PostgreSQL comparison ignores postgresql_where). Let Postgres
    canonicalize instead: create each model index under a scratch name (in a transaction
    the caller rolls back) and compare its pg_get_indexdef with the live index's."""
    diffs: list[tuple[str, str | None, str]] = []
    indexdef = text("SELECT indexdef FROM pg_indexes "
                    "WHERE schemaname = 'public' AND indexname = :n")
    indexes = [i for t in metadata.sorted_tables for i in t.indexes]
    for n, index in enumerate(sorted(indexes, key=lambda i: str(i.name))):
        name, scratch = str(index.name), f"farm_scratch_ix_{n}"
        ddl = str(CreateIndex(index).compile(dialect=conn.dialect))
        assert f" {name} ON " in ddl, ddl
        conn.execute(text(ddl.replace(f" {name} ON ", f" {scratch} ON ", 1)))
        model = str(conn.execute(indexdef, {"n": scratch}).scalar_one())
        live = conn.execute(indexdef, {"n": name}).scalar()
        model = model.replace(f" {scratch} ON ", f" {name} ON ", 1)
        if live != model:
            diffs.append((name, live, model))
    return diffs


def _assert_models_match(engine: Engine) -> None:
    with engine.connect() as conn:
        # columns, types, nullability, server defaults, indexes (expressions included),
        # foreign keys: nothing differs
        assert _model_diffs(conn) == []
        # and every index, partial predicate included, is the one the models declare
        assert _index_definition_diffs(conn) == []
        conn.rollback()


def _schema(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the farm's migrations create in schema public, as the catalog has it:
    relations, columns with types, nullability and defaults, constraints, index
    definitions (partial and expression ones included) and view definitions. Not a
    column's position: a column dropped and added again comes last, as Postgres does it."""
    queries = {
        "relations": """
            SELECT c.relname, c.relkind FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'i', 'S', 'p', 'f')
            ORDER BY 1""",
        "columns": """
            SELECT table_name, column_name, data_type, character_maximum_length,
                   numeric_precision, numeric_scale, is_nullable, column_default
            FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
        "constraints": """
            SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
        "indexes": """
            SELECT tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = 'public' ORDER BY 1, 2""",
        "views": """
            SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'
            ORDER BY 1""",
    }
    with engine.connect() as conn:
        return {
            name: [tuple(row) for row in conn.execute(text(sql))]
            for name, sql in queries.items()
        }


def _farm_relations(engine: Engine) -> list[tuple[Any, ...]]:
    return [r for r in _schema(engine)["relations"] if r[0] not in ALEMBIC_OWN]


def test_models_match_head_and_downgrade_to_base_removes_everything(
        config: Config, engine: Engine) -> None:
    assert _farm_relations(engine) == []
    command.upgrade(config, "head")
    _assert_models_match(engine)
    head = _schema(engine)
    views = {name for name, kind in _farm_relations(engine) if kind == "v"}
    assert views == {"cost_report", "cost_report_jobs", "cost_report_attempts"}

    command.downgrade(config, "base")
    assert _farm_relations(engine) == []

    command.upgrade(config, "head")
    _assert_models_match(engine)
    assert _schema(engine) == head


def test_every_revision_downgrades_to_exactly_the_schema_before_it(
        config: Config, engine: Engine) -> None:
    revisions = _revisions(config)
    assert revisions[0] == "0001" and len(revisions) >= 4
    before = _schema(engine)
    for revision in revisions:
        command.upgrade(config, revision)
        after = _schema(engine)
        assert after != before, f"{revision} changed nothing"
        command.downgrade(config, "-1")
        assert _schema(engine) == before, f"downgrade of {revision} left a different schema"
        command.upgrade(config, revision)
        assert _schema(engine) == after, f"{revision} upgraded again differs"
        before = after
    _assert_models_match(engine)


def test_the_comparison_sees_a_missing_expression_index(
        config: Config, engine: Engine) -> None:
    """The model check is not vacuous: an index the models declare and the database lacks
    (here an expression index) is reported."""
    command.upgrade(config, "head")
    with engine.connect() as conn:
        conn.execute(text("DROP INDEX ix_attempts_started_day"))
        diffs = _model_diffs(conn)
        conn.rollback()
    assert [(d[0], d[1].name) for d in diffs] == [("add_index", "ix_attempts_started_day")]


def test_the_index_check_sees_a_different_partial_predicate(
        config: Config, engine: Engine) -> None:
    """Where compare_metadata is blind (a partial index's WHERE), the catalog check is not."""
    command.upgrade(config, "head")
    with engine.connect() as conn:
        conn.execute(text("DROP INDEX ix_jobs_active"))
        conn.execute(text("CREATE INDEX ix_jobs_active ON jobs (status) "
                          "WHERE status = 'queued'"))
        assert _model_diffs(conn) == []  # the known gap of autogenerate
        diffs = _index_definition_diffs(conn)
        conn.rollback()
    assert [d[0] for d in diffs] == ["ix_jobs_active"]
    assert "'queued'" in str(diffs[0][1]) and "'running'" in diffs[0][2]
