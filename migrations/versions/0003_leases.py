"""leases on running jobs, due time of retries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a running job's worker renews lease_until; once it has passed, any worker re-queues
    op.add_column("jobs", sa.Column("lease_until", sa.DateTime(timezone=True)))
    # when a retry's delayed message is due; one long overdue is re-published
    op.add_column("jobs", sa.Column("next_run_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("jobs", "next_run_at")
    op.drop_column("jobs", "lease_until")
