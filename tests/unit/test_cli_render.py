"""What the CLI prints, as pure functions: money (farm.costs.money), the cost report's table
and totals (farm.costs.reports), invalid jobs and job lines (farm.cli.render)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from farm.cli.render import Progress, invalid_jobs, job_line, status_lines, unfinished
from farm.client import InvalidJobError, JobView, validate
from farm.costs.money import exact, usd
from farm.costs.reports import ReportRow, render, totals
from farm.jobs import CONTEXT_WINDOW_TOKENS
from farm.settings import Settings


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0E-10", "$0.00"),  # what Postgres's numeric(18,10) gives back for a free call
        ("0.0001460000", "$0.000146"),
        ("0.000644", "$0.000644"),
        ("0.0644", "$0.0644"),
        ("0.5", "$0.500"),
        ("0.0009996", "$0.00100"),  # rounded to 3 significant digits, then shown
        ("0.9999", "$1.00"),
        ("12.3456", "$12.35"),  # never fewer than cents
        ("1234.5678", "$1,234.57"),
        ("1E-12", "$0.00000000000100"),
        ("-0.00123", "-$0.00123"),
    ],
)
def test_usd_shows_three_significant_digits_and_at_least_cents(amount: str,
                                                                 shown: str) -> None:
    assert usd(Decimal(amount)) == shown


def test_usd_never_uses_scientific_notation() -> None:
    for exponent in range(-14, 10):
        for digits in ("1", "9.999", "4.5", "0"):
            text = usd(Decimal(digits).scaleb(exponent))
            assert "E" not in text.upper(), text
    assert usd(None) == "-"


def test_json_money_is_exact_and_fixed_point() -> None:
    assert exact(Decimal("0E-10")) == "0.0000000000"
    assert exact(Decimal("0.0001460000")) == "0.0001460000"
    row = _row(cost_usd=Decimal("0E-10"))
    assert json.loads(row.model_dump_json())["cost_usd"] == "0.0000000000"
    assert row.model_dump()["cost_usd"] == Decimal(0)  # Python keeps the Decimal
    view = _view(cost_usd=Decimal("0E-10"))
    assert json.loads(view.model_dump_json())["cost_usd"] == "0.0000000000"


def _row(**fields: Any) -> ReportRow:
    base: dict[str, Any] = dict(
        queue="haiku-simple", model="claude-haiku-4-5", jobs=10, succeeded=4, failed=2,
        cancelled=3, pending=1, input_tokens=100, output_tokens=50, cache_tokens=0,
        cost_usd=Decimal("0.0001460000"), unpriced_jobs=0, calls=8, errors=2,
        p50_ms=900.0, p95_ms=1500.0)
    return ReportRow(**{**base, **fields})


def test_the_report_table_adds_up_with_a_cancelled_column() -> None:
    rows = [_row(), _row(queue="sonnet-complex", model="claude-sonnet-5-5", jobs=5,
                         succeeded=1, failed=0, cancelled=1, pending=3,
                         cost_usd=Decimal("0.0100000000"))]
    total = totals(rows)
    assert (total.jobs, total.succeeded, total.failed, total.cancelled, total.pending) == (
        15, 5, 2, 4, 4)
    assert total.succeeded + total.failed + total.cancelled + total.pending == total.jobs
    assert total.cost_usd == Decimal("0.0101460000")
    table = render(rows).splitlines()
    assert table[0].split()[:7] == ["queue", "model", "jobs", "ok", "fail", "cancel", "pend"]
    for line in (table[2], table[3]):
        jobs, ok, fail, cancelled, pending = map(int, line.split()[2:7])
        assert ok + fail + cancelled + pending == jobs, line
    assert table[2].split()[2:8] == ["10", "4", "2", "3", "1", "100"]
    assert "$0.000146" in table[2] and "$0.0100" in table[3]
    assert table[-1].split() == ["total", "15", "5", "2", "4", "4", "200", "100", "$0.0101"]
    assert "E-" not in render([_row(cost_usd=Decimal("0E-10"))])


def test_the_report_marks_unknown_cost() -> None:
    table = render([_row(unpriced_jobs=2, cost_usd=None)])
    assert "$0.00+unknown" in table and "WARNING: 2 job(s)" in table


def _view(**fields: Any) -> JobView:
    base: dict[str, Any] = dict(
        id=uuid.UUID(int=7), status="succeeded", queue="haiku-simple",
        model="claude-haiku-4-5", served_model="claude-haiku-4-5", complexity="simple",
        priority="normal", tenant="t", response_text="Lima.", stop_reason="end_turn",
        input_tokens=10, output_tokens=5, cache_creation_input_tokens=0,
        cache_read_input_tokens=0, cost_usd=Decimal("0.0000350000"), cost_unknown=False,
        attempts=1, error=None, created_at=datetime(2026, 1, 1, tzinfo=UTC),
        started_at=None, finished_at=None)
    return JobView(**{**base, **fields})


def test_job_lines_show_money_for_people() -> None:
    assert "cost=$0.0000350 'Lima.'" in job_line(_view())
    assert "cost=$0.00 " in job_line(_view(cost_usd=Decimal("0E-10"), status="failed"))
    unknown = _view(cost_usd=None, cost_unknown=True)
    assert "cost=unknown (a call ran on a model with no price row)" in job_line(unknown)
    lines = status_lines(_view(cost_usd=Decimal("0E-10")))
    assert any(line.split() == ["cost_usd", "$0.00"] for line in lines), lines


BAD_JOBS = [
    {"prompt": "x", "model": "gpt-4"},
    {"prompt": "x", "queue": "nope"},
    {"prompt": "  "},
    {"prompt": "x" * (4 * CONTEXT_WINDOW_TOKENS)},
    {"prompt": "x", "metadata": {"k" * 65: "v"}},
    {"prompt": "x", "metadata": {str(i): "v" for i in range(33)}},
    {"prompt": "x", "max_tokens": 0},
]


def test_every_problem_names_its_field_once() -> None:
    with pytest.raises(InvalidJobError) as info:
        validate(BAD_JOBS, Settings())
    problems = info.value.problems
    assert sorted({index for index, _, _ in problems}) == list(range(len(BAD_JOBS)))
    for _, field, message in problems:
        assert not message.lower().startswith((field.lower(), "value error")), (field, message)
    text = str(info.value)
    assert "job 0: model: unknown model 'gpt-4'; known: " in text
    assert "job 1: queue: unknown queue 'nope'; known: " in text
    assert "job 2: prompt: is blank" in text


def test_invalid_jobs_for_a_terminal() -> None:
    one = invalid_jobs([(0, "model", "unknown model 'gpt-4'")], lambda _: "")
    assert one == "invalid job(s), nothing was enqueued: model: unknown model 'gpt-4'"
    lines = {0: 1, 1: 3}
    two = invalid_jobs([(0, "queue", "unknown queue 'q'"), (1, "priority", "bad")],
                       lambda i: f"jobs.jsonl:{lines[i]}: ")
    assert two.splitlines() == ["invalid job(s), nothing was enqueued:",
                                "  jobs.jsonl:1: queue: unknown queue 'q'",
                                "  jobs.jsonl:3: priority: bad"]


def test_progress_is_quiet_at_first_then_on_change_at_most_every_two_seconds() -> None:
    progress = Progress(300, start=100.0)
    assert progress.line(0, 100.0) is None and progress.line(12, 101.9) is None  # short wait
    assert progress.line(12, 102.0) == "12/300 finished (2s)"
    assert progress.line(20, 103.0) is None  # changed, but too soon
    assert progress.line(20, 104.0) == "20/300 finished (4s)"
    assert progress.line(20, 107.0) is None  # no change: quiet
    assert progress.line(20, 134.0) == "20/300 finished (34s)"  # but alive every 30 s
    assert progress.line(299, 134.5) is None
    assert progress.line(300, 134.6) == "300/300 finished (35s)"  # the last one at once


def test_a_short_wait_prints_no_progress() -> None:
    progress = Progress(3, start=0.0)
    assert [progress.line(done, t) for done, t in ((0, 0.0), (2, 0.5), (3, 1.0))] == [
        None, None, None]


def test_unfinished_jobs_are_listed_with_their_status() -> None:
    a, b = uuid.UUID(int=1), uuid.UUID(int=2)
    assert unfinished([a, b], {a: "running"}) == [
        f"{a} running", f"{b} not recorded yet (no worker has taken it)"]
