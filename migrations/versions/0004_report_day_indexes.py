"""indexes on the report views' UTC day; cost_report takes a day filter to both its sides

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The cost-report views group by ``date_trunc('day', <ts> AT TIME ZONE 'UTC')::date``. A
filter on their ``day`` column is pushed down into the view as a filter on that expression,
which the plain ``created_at``/``started_at`` indexes cannot serve: Postgres read the whole
table. The indexes added here are on exactly the views' expressions (all of whose functions
are IMMUTABLE: ``timezone(text, timestamptz)``, ``date_trunc(text, timestamp)``,
``date(timestamp)``), so ``day = …`` and ``day`` ranges on the views are index scans.

``cost_report`` was a LEFT JOIN of the per-day attempts to the per-day job counts: an
equality on ``day`` reached both sides (through the join's equivalence), but a range such as
``day >= current_date - 7`` reached only the attempts side, and every job was aggregated.
It is now one GROUP BY over a UNION ALL of the two views, so any filter on ``day`` is pushed
into both. Columns, types and values are unchanged: a row per day x queue x model that had
calls, ``jobs`` the sum over tenants of ``cost_report_jobs.jobs`` (0 when none), the other
columns those of ``cost_report_attempts`` (one row per group there, so ``max`` is that
row's value).

Plain CREATE INDEX (not CONCURRENTLY): it runs in the migration's transaction, under its
advisory lock, and blocks writes to the table while the index is built.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The views' GROUP BY expressions (0001): the planner matches an index expression to a
# query's by its parse tree, so these must stay the same expressions as the views'. (The
# parentheses are how Postgres prints them back; farm/store/schema.py spells them so.)
JOBS_DAY = "(date_trunc('day', (created_at AT TIME ZONE 'UTC'))::date)"
ATTEMPTS_DAY = "(date_trunc('day', (started_at AT TIME ZONE 'UTC'))::date)"

COST_REPORT_0001 = """
    CREATE OR REPLACE VIEW cost_report AS
    SELECT a.day, a.queue, a.model,
           coalesce(j.jobs, 0) AS jobs,
           a.calls, a.errors, a.error_rate,
           a.input_tokens, a.output_tokens, a.cost_usd,
           a.p50_latency_ms, a.p95_latency_ms
    FROM cost_report_attempts a
    LEFT JOIN (
        SELECT day, queue, model, sum(jobs) AS jobs
        FROM cost_report_jobs GROUP BY day, queue, model
    ) j USING (day, queue, model)
"""

COST_REPORT_0004 = """
    CREATE OR REPLACE VIEW cost_report AS
    SELECT day, queue, model,
           coalesce(sum(jobs), 0) AS jobs,
           max(calls) AS calls, max(errors) AS errors, max(error_rate) AS error_rate,
           max(input_tokens) AS input_tokens, max(output_tokens) AS output_tokens,
           max(cost_usd) AS cost_usd,
           max(p50_latency_ms) AS p50_latency_ms, max(p95_latency_ms) AS p95_latency_ms
    FROM (
        SELECT day, queue, model, NULL::bigint AS jobs, calls, errors, error_rate,
               input_tokens, output_tokens, cost_usd, p50_latency_ms, p95_latency_ms
        FROM cost_report_attempts
        UNION ALL
        SELECT day, queue, model, jobs, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
        FROM cost_report_jobs
    ) AS per_day
    GROUP BY day, queue, model
    HAVING count(calls) > 0
"""


def upgrade() -> None:
    op.create_index("ix_jobs_created_day", "jobs", [sa.text(JOBS_DAY)])
    op.create_index("ix_attempts_started_day", "attempts", [sa.text(ATTEMPTS_DAY)])
    op.execute(COST_REPORT_0004)


def downgrade() -> None:
    op.execute(COST_REPORT_0001)
    op.drop_index("ix_attempts_started_day", table_name="attempts")
    op.drop_index("ix_jobs_created_day", table_name="jobs")
