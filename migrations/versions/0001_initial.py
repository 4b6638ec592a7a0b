"""jobs, attempts and the cost-report views

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(18, 10)


def _token_columns() -> list[sa.Column[int]]:
    return [
        sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    ]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("complexity", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("route_reason", sa.Text),
        sa.Column("request", postgresql.JSONB, nullable=False),
        sa.Column("response_text", sa.Text),
        sa.Column("stop_reason", sa.String(32)),
        sa.Column("served_model", sa.String(128)),
        *_token_columns(),
        sa.Column("cost_usd", MONEY),
        sa.Column("cost_unknown", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed','dead','cancelled')",
            name="ck_jobs_status",
        ),
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_tenant_created_at", "jobs", ["tenant", "created_at"])
    op.create_index(
        "ix_jobs_active",
        "jobs",
        ["status"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )

    op.create_table(
        "attempts",
        sa.Column(
            "job_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("error", sa.Text),
        *_token_columns(),
        sa.Column("cost_usd", MONEY),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("request_id", sa.String(128)),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        # one row per (job, attempt): the key that makes accounting idempotent
        sa.PrimaryKeyConstraint("job_id", "attempt", name="pk_attempts"),
    )
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])

    # Reporting interface (documented in the README). Days are UTC.
    op.execute(
        """
        CREATE VIEW cost_report_jobs AS
        SELECT date_trunc('day', created_at AT TIME ZONE 'UTC')::date AS day,
               queue, model, tenant,
               count(*)                                            AS jobs,
               count(*) FILTER (WHERE status = 'succeeded')        AS succeeded,
               count(*) FILTER (WHERE status IN ('failed','dead')) AS failed,
               count(*) FILTER (WHERE status IN ('queued','running')) AS pending,
               sum(input_tokens)                                   AS input_tokens,
               sum(output_tokens)                                  AS output_tokens,
               sum(cache_creation_input_tokens)                    AS cache_creation_input_tokens,
               sum(cache_read_input_tokens)                        AS cache_read_input_tokens,
               sum(cost_usd)                                       AS cost_usd,
               count(*) FILTER (WHERE cost_unknown)                AS unpriced_jobs,
               percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM finished_at - created_at))
                   FILTER (WHERE finished_at IS NOT NULL)           AS p50_turnaround_s,
               percentile_cont(0.95) WITHIN GROUP (
                   ORDER BY extract(epoch FROM finished_at - created_at))
                   FILTER (WHERE finished_at IS NOT NULL)           AS p95_turnaround_s
        FROM jobs
        GROUP BY 1, queue, model, tenant
        """
    )
    op.execute(
        """
        CREATE VIEW cost_report_attempts AS
        SELECT date_trunc('day', started_at AT TIME ZONE 'UTC')::date AS day,
               queue, model,
               count(*)                                        AS calls,
               count(*) FILTER (WHERE outcome <> 'ok')         AS errors,
               round(count(*) FILTER (WHERE outcome <> 'ok')::numeric / count(*), 4)
                                                               AS error_rate,
               sum(input_tokens)                               AS input_tokens,
               sum(output_tokens)                              AS output_tokens,
               sum(cost_usd)                                   AS cost_usd,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)  AS p50_latency_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms
        FROM attempts
        GROUP BY 1, queue, model
        """
    )
    op.execute(
        """
        CREATE VIEW cost_report AS
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
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS cost_report")
    op.execute("DROP VIEW IF EXISTS cost_report_attempts")
    op.execute("DROP VIEW IF EXISTS cost_report_jobs")
    op.drop_table("attempts")
    op.drop_table("jobs")
