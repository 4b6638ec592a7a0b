"""router: route score, second opinion, escalation, route feedback

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the learned classifier's score; a second opinion the worker still has to ask; the
    # simple model a job escalated from; the calls made to route a job (a second opinion,
    # an escalated answer), which the retry policy and the poison count leave out
    op.add_column("jobs", sa.Column("route_score", sa.Float()))
    op.add_column("jobs", sa.Column("second_opinion", sa.Boolean(), nullable=False,
                                    server_default=sa.text("false")))
    op.add_column("jobs", sa.Column("escalated_from", sa.String(128)))
    op.add_column("jobs", sa.Column("routing_calls", sa.Integer(), nullable=False,
                                    server_default="0"))
    # what a job turned out to need, for the router to learn from
    op.create_table(
        "route_feedback",
        sa.Column("job_id", postgresql.UUID(as_uuid=True),
                  sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.CheckConstraint("label IN ('simple','complex')", name="ck_route_feedback_label"),
    )


def downgrade() -> None:
    op.drop_table("route_feedback")
    for column in ("routing_calls", "escalated_from", "second_opinion", "route_score"):
        op.drop_column("jobs", column)
