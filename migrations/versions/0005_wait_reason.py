"""why a queued job waits

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # set while a queued job waits on a countdown (held, queue paused, capacity, open
    # circuit, retry backoff), cleared when it starts: what `farm status` says
    op.add_column("jobs", sa.Column("wait_reason", sa.Text()))


def downgrade() -> None:
    op.drop_column("jobs", "wait_reason")
