"""memo: result memoization (a job's memo key, whether it was a cache hit, what that saved)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# the answers a memoizing job may reuse: its tenant's succeeded originals with its key,
# newest first (farm.memo.store.lookup)
REUSABLE = "memo_key IS NOT NULL AND status = 'succeeded' AND NOT cache_hit"


def upgrade() -> None:
    # the hash of the body the provider got (farm.memo.key); a job served from an earlier
    # identical job's answer (no call); the cost of that answer, which this job did not pay
    op.add_column("jobs", sa.Column("memo_key", sa.String(64)))
    op.add_column("jobs", sa.Column("cache_hit", sa.Boolean(), nullable=False,
                                    server_default=sa.text("false")))
    op.add_column("jobs", sa.Column("saved_usd", sa.Numeric(18, 10)))
    op.create_index("ix_jobs_memo", "jobs", ["tenant", "memo_key", "finished_at"],
                    postgresql_where=sa.text(REUSABLE))


def downgrade() -> None:
    op.drop_index("ix_jobs_memo", table_name="jobs")
    for column in ("saved_usd", "cache_hit", "memo_key"):
        op.drop_column("jobs", column)
