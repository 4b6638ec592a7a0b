"""batches: Message Batches, the requests each one carries, and the jobs that wait for one

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

STATUSES = "'creating','in_progress','canceling','ended','done','failed'"


def upgrade() -> None:
    # a job that waits for a Message Batch (farm.batches): recorded queued, never published
    op.add_column("jobs", sa.Column("batched", sa.Boolean(), nullable=False,
                                    server_default=sa.text("false")))
    # the collector's claim: a model's waiting jobs, oldest first
    op.create_index("ix_jobs_batch_pending", "jobs", ["model", "created_at"],
                    postgresql_where=sa.text("batched AND status = 'queued'"))
    # one Message Batch: its row exists (status creating) before the provider is asked, and
    # the provider's id is kept as soon as it is known
    op.create_table(
        "batches",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("provider_id", sa.Text(), unique=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("request_counts", postgresql.JSONB()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("next_poll_at", sa.DateTime(timezone=True)),
        sa.Column("polls", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text()),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="ck_batches_status"),
    )
    op.create_index("ix_batches_open", "batches", ["next_poll_at"],
                    postgresql_where=sa.text("status IN ('creating', 'in_progress', "
                                             "'canceling', 'ended')"))
    op.create_index("ix_batches_created_at", "batches", ["created_at"])
    # each request of a batch: its job (custom_id) and the attempt it is
    op.create_table(
        "batch_items",
        sa.Column("batch_id", postgresql.UUID(as_uuid=True),
                  sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("job_id", postgresql.UUID(as_uuid=True),
                  sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worst_usd", sa.Numeric(18, 10)),
    )
    op.create_index("ix_batch_items_job_id", "batch_items", ["job_id"])


def downgrade() -> None:
    op.drop_table("batch_items")
    op.drop_table("batches")
    op.drop_index("ix_jobs_batch_pending", table_name="jobs")
    op.drop_column("jobs", "batched")
