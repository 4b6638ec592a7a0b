"""Alembic environment: the URL comes from the farm's settings via `farm migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from farm.store.schema import metadata

config = context.config
target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set: run migrations through `farm migrate`"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection, connection.begin():
        # serialize concurrent `farm migrate` runs (several workers booting at once)
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
