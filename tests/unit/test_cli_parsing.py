"""What the job commands read from their options (farm.cli.parsing), the `farm jobs` table
and what `farm migrate` says it did: pure functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from farm.cli import parsing
from farm.cli.render import jobs_table
from farm.client import JobView
from farm.store.migrate import describe

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_metadata_items_become_a_mapping() -> None:
    assert parsing.metadata(["ticket=T-1", "expr=a=b", "empty="]) == {
        "ticket": "T-1", "expr": "a=b", "empty": ""}
    assert parsing.metadata([]) == {}


@pytest.mark.parametrize(("items", "message"), [
    (["ticket"], "expected KEY=VALUE, got 'ticket'"),
    (["=T-1"], "expected KEY=VALUE, got '=T-1'"),
    (["k=1", "k=2"], "key 'k' given twice"),
])
def test_bad_metadata_is_named(items: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parsing.metadata(items)


@pytest.mark.parametrize(("text", "moment"), [
    ("6", NOW - timedelta(hours=6)),  # a bare number is hours
    ("1.5", NOW - timedelta(hours=1.5)),
    ("90s", NOW - timedelta(seconds=90)),
    ("30m", NOW - timedelta(minutes=30)),
    ("2h", NOW - timedelta(hours=2)),
    ("7d", NOW - timedelta(days=7)),
    ("2026-11-29", datetime(2026, 11, 29, tzinfo=UTC)),  # no offset: UTC
    ("2026-11-29T08:30", datetime(2026, 11, 29, 8, 30, tzinfo=UTC)),
    ("2026-11-29T08:30+01:00", datetime(2026, 11, 29, 7, 30, tzinfo=UTC)),
])
def test_since_reads_hours_durations_and_iso_times(text: str, moment: datetime) -> None:
    assert parsing.since(text, NOW) == moment


@pytest.mark.parametrize("text", ["yesterday", "-2", "2w", "", "1e3"])
def test_a_bad_since_is_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected hours .* or an ISO time .*, got "):
        parsing.since(text, NOW)


def test_the_jobs_table_has_a_row_per_job_in_the_order_given() -> None:
    def view(n: int, **fields: object) -> JobView:
        base: dict[str, object] = dict(
            id=uuid.UUID(int=n), status="succeeded", queue="haiku-simple",
            model="claude-haiku-4-5", served_model=None, complexity="simple",
            priority="normal", tenant="acme", response_text=None, stop_reason=None,
            input_tokens=0, output_tokens=0, cache_creation_input_tokens=0,
            cache_read_input_tokens=0, cost_usd=Decimal("0.0001460000"),
            cost_unknown=False, attempts=1, error=None,
            created_at=datetime(2026, 11, 30, 13, 5, tzinfo=timezone(timedelta(hours=1))),
            started_at=None, finished_at=None)
        return JobView.model_validate({**base, **fields})

    lines = jobs_table([view(2), view(1, status="cancelled", cost_usd=None,
                                      cost_unknown=True)])
    assert lines[0].split() == ["id", "created", "(UTC)", "status", "queue", "model",
                                "tenant", "cost"]
    assert lines[1].split() == [str(uuid.UUID(int=2)), "2026-11-30", "12:05:00", "succeeded",
                                "haiku-simple", "claude-haiku-4-5", "acme", "$0.000146"]
    assert lines[2].split()[0] == str(uuid.UUID(int=1)) and lines[2].endswith("unknown")


def test_migrate_says_what_it_did() -> None:
    assert describe("0004", "0004", "0004") == (
        "database schema already at head 0004: nothing to do")
    assert describe(None, "0004", "0004") == "created the database schema: none -> 0004 (head)"
    assert describe("0002", "0004", "0004") == (
        "upgraded the database schema: 0002 -> 0004 (head)")
    assert describe("0002", "0003", "0004") == "upgraded the database schema: 0002 -> 0003"
