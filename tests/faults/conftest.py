"""Fault tests: real workers, real servers, and faults done to them (kill, stop, restart).

Each test that stops a server gets servers of its own (embedded, in a temporary folder), so
the rest of the suite is never disturbed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import services


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Path, int, str]]:
    """A PostgreSQL of this test's own, migrated: (data dir, port, SQLAlchemy URL)."""
    from alembic import command

    from farm.store.migrate import alembic_config
    from tests_support import free_port

    data_dir = tmp_path / "pg"
    port = free_port()
    services.start_postgres(data_dir, port)
    url = services.endpoints_for(0, port).database_url
    command.upgrade(alembic_config(url), "head")
    try:
        yield data_dir, port, url
    finally:
        services.stop_postgres(data_dir)


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[tuple[Path, int, str]]:
    """A Valkey of this test's own (AOF on, as `farm up` runs it): (data dir, port, URL)."""
    from tests_support import free_port

    port = free_port()
    services.start_valkey(tmp_path, port)
    try:
        yield tmp_path, port, f"redis://127.0.0.1:{port}/0"
    finally:
        services.stop_valkey(tmp_path)


@pytest.fixture
def fault_env(e2e_env: dict[str, str]) -> dict[str, str]:
    return dict(e2e_env)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if f"{os.sep}faults{os.sep}" in str(item.path):
            item.add_marker(pytest.mark.faults)
