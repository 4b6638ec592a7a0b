"""The CLI's one-line explanations of expected failures (farm.cli.errors.explain)."""

from __future__ import annotations

import errno

import psycopg
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa_exc

from farm.cli.errors import explain
from farm.client import SubmitError


def test_expected_failures_get_one_line() -> None:
    db = sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused\nmore"))
    assert explain(db) == "cannot reach the database: connection refused"
    schema = sa_exc.ProgrammingError("SELECT", {}, Exception('relation "jobs" does not exist'))
    assert "farm migrate" in (explain(schema) or "")
    # the job statements' errors come from psycopg itself (farm.store.db)
    refused = psycopg.OperationalError('connection to server at "127.0.0.1" failed: refused')
    assert explain(refused) == ('cannot reach the database: connection to server at '
                                '"127.0.0.1" failed: refused')
    missing = psycopg.errors.UndefinedTable('relation "jobs" does not exist')
    assert "farm migrate" in (explain(missing) or "")
    assert explain(psycopg.errors.UniqueViolation("duplicate key")) is None
    assert explain(BrokerError("Error 111 connecting")) == (
        "cannot reach the broker (Redis): Error 111 connecting")
    assert explain(FileNotFoundError(errno.ENOENT, "No such file", "/x.jsonl")) == (
        "no such file: /x.jsonl")
    busy = OSError(errno.EADDRINUSE, "address already in use")
    assert "pick another --port" in (explain(busy) or "")
    cut = SubmitError(3, "publish failed: boom", ["00000000-0000-0000-0000-000000000001"])
    assert explain(cut) == ("submit cut short: publish failed: boom; 3 job(s) were enqueued "
                            "before it; recorded as failed, not run: "
                            "00000000-0000-0000-0000-000000000001")


def test_a_bug_keeps_its_traceback() -> None:
    assert explain(KeyError("x")) is None and explain(ZeroDivisionError()) is None
