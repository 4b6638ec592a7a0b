"""Cost reports: SQL over `jobs` and `attempts` (the views in the README are the same sums,
per day). Percentiles are computed over raw rows because they do not add up across days."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.costs.money import ExactUsd, usd

SUMMARY_SQL = text(
    """
    WITH j AS (
        SELECT queue, coalesce(served_model, model) AS model,
               count(*) AS jobs,
               count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE status IN ('failed', 'dead')) AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE status IN ('queued', 'running')) AS pending,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               coalesce(sum(cache_creation_input_tokens + cache_read_input_tokens), 0)
                   AS cache_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE cost_unknown) AS unpriced_jobs
        FROM jobs
        WHERE created_at >= :since
        GROUP BY 1, 2
    ), a AS (
        SELECT a.queue, a.model,
               count(*) AS calls,
               count(*) FILTER (WHERE a.outcome <> 'ok') AS errors,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms)
                   FILTER (WHERE a.outcome = 'ok') AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms)
                   FILTER (WHERE a.outcome = 'ok') AS p95_ms
        FROM attempts a JOIN jobs ON jobs.id = a.job_id
        WHERE jobs.created_at >= :since
        GROUP BY 1, 2
    )
    SELECT j.*, coalesce(a.calls, 0) AS calls, coalesce(a.errors, 0) AS errors,
           a.p50_ms, a.p95_ms
    FROM j LEFT JOIN a USING (queue, model)
    ORDER BY j.queue, j.model
    """
)


class ReportRow(BaseModel):
    """One queue and served model. Every job is in exactly one of succeeded, failed
    (failed or dead), cancelled and pending (queued or running): they add up to `jobs`."""

    model_config = ConfigDict(frozen=True)

    queue: str
    model: str
    jobs: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int
    input_tokens: int
    output_tokens: int
    cache_tokens: int
    cost_usd: ExactUsd | None
    unpriced_jobs: int
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def summary(engine: Engine, *, since: datetime | None = None) -> list[ReportRow]:
    """Per queue and served model, over jobs created at or after `since` (default: all)."""
    start = since or datetime(1970, 1, 1, tzinfo=UTC)
    with engine.connect() as conn:
        rows = conn.execute(SUMMARY_SQL, {"since": start}).mappings().all()
    return [ReportRow.model_validate(dict(r)) for r in rows]


def render(rows: list[ReportRow]) -> str:
    """A fixed-width table for terminals, with a total line; money as `farm.costs.money.usd`
    writes it."""
    head = (f"{'queue':<16}{'model':<20}{'jobs':>6}{'ok':>6}{'fail':>6}{'cancel':>7}"
            f"{'pend':>6}{'in tok':>10}{'out tok':>10}{'cost USD':>18}{'p50 ms':>9}"
            f"{'p95 ms':>9}{'err%':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cost = usd(r.cost_usd or Decimal(0)) + ("+unknown" if r.unpriced_jobs else "")
        p50 = "-" if r.p50_ms is None else f"{r.p50_ms:.0f}"
        p95 = "-" if r.p95_ms is None else f"{r.p95_ms:.0f}"
        lines.append(
            f"{r.queue:<16}{r.model:<20}{_counts(r)}{cost:>18}{p50:>9}{p95:>9}"
            f"{100 * r.error_rate:>6.1f}%"
        )
    lines.append("-" * len(head))
    total = totals(rows)
    cost = usd(total.cost_usd) + ("+unknown" if total.unpriced_jobs else "")
    lines.append(f"{'total':<36}{_counts(total)}{cost:>18}")
    if total.unpriced_jobs:
        lines.append(f"WARNING: {total.unpriced_jobs} job(s) ran on a model with no price row: "
                     "cost unknown")
    return "\n".join(lines)


def _counts(r: ReportRow) -> str:
    return (f"{r.jobs:>6}{r.succeeded:>6}{r.failed:>6}{r.cancelled:>7}{r.pending:>6}"
            f"{r.input_tokens:>10}{r.output_tokens:>10}")


def totals(rows: list[ReportRow]) -> ReportRow:
    """The sums over every row (cost: of the priced jobs; calls and errors summed,
    percentiles left out: they do not add up)."""
    def total(name: str) -> int:
        return sum(getattr(r, name) for r in rows)

    counted = ("jobs", "succeeded", "failed", "cancelled", "pending", "input_tokens",
               "output_tokens", "cache_tokens", "unpriced_jobs", "calls", "errors")
    return ReportRow(queue="total", model="", **{name: total(name) for name in counted},
                     cost_usd=sum((r.cost_usd or Decimal(0) for r in rows), Decimal(0)),
                     p50_ms=None, p95_ms=None)
