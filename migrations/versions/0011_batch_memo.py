"""batch memo: the memo key of a batch request (farm.batches.memo)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the memo key of a memoizing job's request in a batch: an identical job waits while it
    # is in flight, and its answer, when it may serve, gets the key on its job
    op.add_column("batch_items", sa.Column("memo_key", sa.String(64)))


def downgrade() -> None:
    op.drop_column("batch_items", "memo_key")
