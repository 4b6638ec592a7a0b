"""budgets

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # what operators set (`farm budget set`); Redis holds the mirror the workers read, and
    # each period's spend, rebuilt from the attempt rows when Redis lost it
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("limit_usd", sa.Numeric(18, 10), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("alert_share", sa.Float()),
        sa.Column("on_exceed", sa.String(8), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.CheckConstraint("scope IN ('global','tenant','queue','model')",
                           name="ck_budgets_scope"),
        sa.CheckConstraint("period IN ('hour','day','month')", name="ck_budgets_period"),
        sa.CheckConstraint("mode IN ('hard','soft')", name="ck_budgets_mode"),
        sa.CheckConstraint("on_exceed IN ('wait','fail')", name="ck_budgets_on_exceed"),
        sa.CheckConstraint("limit_usd > 0", name="ck_budgets_limit"),
    )


def downgrade() -> None:
    op.drop_table("budgets")
