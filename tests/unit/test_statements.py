"""Every fixed SQL statement of the farm stays within what psycopg caches the conversion of
(farm.store.db.compact): a longer one, or one of more parameters, is converted again on
every call, which cost a worker 3 % of its CPU per job for the attempt's record alone."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_PARAMS

import farm
from farm.store.db import compact


def _statements() -> dict[str, str]:
    """Every module-level ``*_SQL`` string of the farm, by where it is defined."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(farm.__path__, "farm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.endswith("_SQL") and isinstance(value, str):
                found[f"{info.name}.{name}"] = value
    return found


STATEMENTS = _statements()


def test_the_walk_finds_the_workers_statements() -> None:
    assert {"farm.store.attempts.RECORD_SQL", "farm.store.jobs.START_SQL"} <= STATEMENTS.keys()
    assert len(STATEMENTS) > 30


@pytest.mark.parametrize("where", sorted(STATEMENTS))
def test_statement_is_cached_by_psycopg(where: str) -> None:
    sql = STATEMENTS[where]
    size = len(sql.encode())
    assert size <= MAX_CACHED_STATEMENT_LENGTH, (
        f"{where} is {size} bytes, over psycopg's {MAX_CACHED_STATEMENT_LENGTH}: wrap it in "
        f"farm.store.db.compact() ({len(compact(sql).encode())} bytes)")
    names = set(re.findall(r"%\((\w+)\)s", sql))
    positional = len(re.findall(r"(?<!%)%s", sql))
    assert len(names) + positional <= MAX_CACHED_STATEMENT_PARAMS, where


def test_compact_keeps_the_statement() -> None:
    sql = """
        SELECT a,   -- a comment ends at the line's end
               'two  spaces'

        FROM t
    """
    assert compact(sql) == "SELECT a,   -- a comment ends at the line's end\n'two  spaces'\nFROM t"
