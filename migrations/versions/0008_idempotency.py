"""idempotency: a job's idempotency key (unique per tenant) and its request's hash

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the caller's key (farm.reliability.idempotency) and the hash of the request it was
    # given with: a key names one job of its tenant, the unique index decides who holds it
    op.add_column("jobs", sa.Column("idempotency_key", sa.String(200)))
    op.add_column("jobs", sa.Column("request_hash", sa.String(64)))
    op.create_index("ux_jobs_idempotency", "jobs", ["tenant", "idempotency_key"], unique=True,
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ux_jobs_idempotency", table_name="jobs")
    for column in ("request_hash", "idempotency_key"):
        op.drop_column("jobs", column)
