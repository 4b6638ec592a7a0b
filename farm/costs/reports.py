"""Cost reports: SQL over `jobs` and `attempts` (the views in the README are the same sums,
per day). Percentiles are computed over raw rows because they do not add up across days."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.engine import Engine

from farm.costs.money import ExactUsd, usd
from farm.costs.pricing import Price
from farm.costs.savings import Tokens, percent, savings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR = datetime(9999, 1, 1, tzinfo=UTC)

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
    start = since or EPOCH
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


# --- grouped: by day, tenant, queue, model (and complexity) ------------------------------
#
# A job counts in the group of its UTC creation day, tenant, queue, served model (the model
# asked for while none served) and routed complexity. A call counts in the group of its
# job's day, tenant and complexity and of its own queue and model (a fallback call counts
# under the model that answered it). Percentiles are of successful calls, over raw rows.

KEYS: tuple[str, ...] = ("day", "tenant", "queue", "model", "complexity")
_JOB_KEYS = {"day": "(j.created_at AT TIME ZONE 'UTC')::date", "tenant": "j.tenant",
             "queue": "j.queue", "model": "coalesce(j.served_model, j.model)",
             "complexity": "j.complexity"}
_CALL_KEYS = {**_JOB_KEYS, "queue": "a.queue", "model": "a.model"}

_JOBS_PART = """
    SELECT {keys}count(*) AS jobs,
           count(*) FILTER (WHERE j.status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE j.status IN ('failed', 'dead')) AS failed,
           count(*) FILTER (WHERE j.status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE j.status IN ('queued', 'running')) AS pending,
           coalesce(sum(j.input_tokens), 0) AS input_tokens,
           coalesce(sum(j.output_tokens), 0) AS output_tokens,
           coalesce(sum(j.cache_creation_input_tokens), 0) AS cache_write_tokens,
           coalesce(sum(j.cache_read_input_tokens), 0) AS cache_read_tokens,
           coalesce(sum(j.cost_usd), 0) AS cost_usd,
           count(*) FILTER (WHERE j.cost_unknown) AS unpriced_jobs,
           coalesce(sum(j.input_tokens) FILTER (WHERE NOT j.cost_unknown), 0) AS priced_input,
           coalesce(sum(j.output_tokens) FILTER (WHERE NOT j.cost_unknown), 0)
               AS priced_output,
           coalesce(sum(j.cache_creation_input_tokens) FILTER (WHERE NOT j.cost_unknown), 0)
               AS priced_cache_write,
           coalesce(sum(j.cache_read_input_tokens) FILTER (WHERE NOT j.cost_unknown), 0)
               AS priced_cache_read
    FROM jobs j
    WHERE j.created_at >= :since AND j.created_at < :until
    {group}"""

_CALLS_PART = """
    SELECT {keys}count(*) AS calls,
           count(*) FILTER (WHERE a.outcome <> 'ok') AS errors,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms)
               FILTER (WHERE a.outcome = 'ok') AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms)
               FILTER (WHERE a.outcome = 'ok') AS p95_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY a.latency_ms)
               FILTER (WHERE a.outcome = 'ok') AS p99_ms
    FROM attempts a JOIN jobs j ON j.id = a.job_id
    WHERE j.created_at >= :since AND j.created_at < :until
    {group}"""


def grouped_sql(by: Sequence[str]) -> str:
    """The query of one grouping (keys from KEYS only: never text from outside)."""
    by = check_keys(by)

    def part(template: str, exprs: dict[str, str]) -> str:
        keys = "".join(f"{exprs[k]} AS {k}, " for k in by)
        group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(by)))}" if by else ""
        return template.format(keys=keys, group=group)

    join = f"FULL JOIN c USING ({', '.join(by)})" if by else "CROSS JOIN c"
    order = f"ORDER BY {', '.join(by)}" if by else ""
    return (f"WITH j AS ({part(_JOBS_PART, _JOB_KEYS)}), c AS ({part(_CALLS_PART, _CALL_KEYS)})"
            f"\nSELECT * FROM j {join} {order}")


def check_keys(by: str | Iterable[str]) -> tuple[str, ...]:
    """The grouping keys, in order, each once, from names or comma lists (``"day,model"``,
    ``["day", "model"]``); ValueError naming an unknown one."""
    items = [by] if isinstance(by, str) else list(by)
    keys: list[str] = []
    for key in (k.strip() for item in items for k in item.split(",") if k.strip()):
        if key not in KEYS:
            raise ValueError(f"cannot group by {key!r}: choose from {', '.join(KEYS)}")
        if key not in keys:
            keys.append(key)
    return tuple(keys)


class GroupedRow(BaseModel):
    """One group: the keys it was grouped by (the others None), its jobs (succeeded,
    failed, cancelled and pending add up to `jobs`), their tokens and cost (of the priced
    jobs; `unpriced_jobs` ran on a model without a price row), its calls and their errors,
    the latency percentiles of its successful calls, and the savings of routing
    (farm.costs.savings; None when the complex model has no price)."""

    model_config = ConfigDict(frozen=True)

    day: date | None = None
    tenant: str | None = None
    queue: str | None = None
    model: str | None = None
    complexity: str | None = None
    jobs: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost_usd: ExactUsd
    unpriced_jobs: int
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    all_complex_usd: ExactUsd | None
    savings_usd: ExactUsd | None

    def keys(self, by: Sequence[str]) -> tuple[str, ...]:
        """The row's values of ``by``, as text."""
        return tuple("" if getattr(self, k) is None else str(getattr(self, k)) for k in by)


_ZERO_CALLS = {"calls": 0, "errors": 0}
_ZERO_JOBS = {"jobs": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "pending": 0,
              "input_tokens": 0, "output_tokens": 0, "cache_write_tokens": 0,
              "cache_read_tokens": 0, "cost_usd": Decimal(0), "unpriced_jobs": 0,
              "priced_input": 0, "priced_output": 0, "priced_cache_write": 0,
              "priced_cache_read": 0}


def grouped(engine: Engine, by: str | Sequence[str], *, complex_price: Price | None,
            since: datetime | None = None, until: datetime | None = None,
            ) -> list[GroupedRow]:
    """Jobs created in [since, until) (default: all), grouped by ``by`` (a subset of
    KEYS, in that order; empty: one row of totals, percentiles over every call)."""
    keys = check_keys(by)
    params = {"since": since or EPOCH, "until": until or FAR}
    with engine.connect() as conn:
        found = conn.execute(text(grouped_sql(keys)), params).mappings().all()
    return [_row(dict(r), complex_price) for r in found]


def _row(found: dict[str, Any], price: Price | None) -> GroupedRow:
    for name, zero in (*_ZERO_JOBS.items(), *_ZERO_CALLS.items()):
        if found.get(name) is None:  # a side of the full join with no row
            found[name] = zero
    tokens = Tokens(input=int(found.pop("priced_input")),
                    output=int(found.pop("priced_output")),
                    cache_write=int(found.pop("priced_cache_write")),
                    cache_read=int(found.pop("priced_cache_read")))
    saved = savings(price, tokens, found["cost_usd"])
    return GroupedRow.model_validate({
        **found, "all_complex_usd": None if saved is None else saved.all_complex_usd,
        "savings_usd": None if saved is None else saved.saved_usd})


def render_grouped(rows: list[GroupedRow], by: Sequence[str], total: GroupedRow) -> str:
    """A fixed-width table of grouped rows with their total line (``total``: the same
    query without keys, so its percentiles are over every call, not averages)."""
    keys = check_keys(by)
    widths = [max([len(k), *(len(v) for r in rows for v in r.keys((k,)))]) + 2 for k in keys]
    head = ("".join(f"{k:<{w}}" for k, w in zip(keys, widths, strict=True))
            + f"{'jobs':>6}{'ok':>6}{'fail':>6}{'cancel':>7}{'pend':>6}{'tokens':>11}"
            + f"{'cost USD':>13}{'calls':>7}{'err':>5}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
            + f"{'saved USD':>13}{'saved':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{v:<{w}}" for v, w in zip(r.keys(keys), widths, strict=True))
        lines.append(cells + _grouped_cells(r))
    lines.append("-" * len(head))
    lines.append(f"{'total':<{sum(widths)}}" + _grouped_cells(total))
    if total.unpriced_jobs:
        lines.append(f"WARNING: {total.unpriced_jobs} job(s) ran on a model with no price row: "
                     "cost unknown, left out of cost and savings")
    if total.savings_usd is None:
        lines.append("note: the complex queue's model has no price row: no savings shown")
    return "\n".join(lines)


def _grouped_cells(r: GroupedRow) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    tokens = r.input_tokens + r.output_tokens + r.cache_write_tokens + r.cache_read_tokens
    cost = usd(r.cost_usd) + ("+?" if r.unpriced_jobs else "")
    share = None
    if r.savings_usd is not None and r.all_complex_usd:
        share = r.savings_usd / r.all_complex_usd
    return (f"{r.jobs:>6}{r.succeeded:>6}{r.failed:>6}{r.cancelled:>7}{r.pending:>6}"
            f"{tokens:>11}{cost:>13}{r.calls:>7}{r.errors:>5}{ms(r.p50_ms):>8}"
            f"{ms(r.p95_ms):>8}{ms(r.p99_ms):>8}{usd(r.savings_usd):>13}{percent(share):>9}")
