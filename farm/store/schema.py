"""Postgres schema (SQLAlchemy 2, typed) and engine construction.

The schema is created by Alembic (``farm migrate``); these models mirror it. Money is
``NUMERIC(18, 10)``, read as ``Decimal``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    create_engine,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MONEY = Numeric(18, 10)

# The report views' UTC day, indexed by migration 0004; written the way pg_get_indexdef
# prints it back, so that alembic's comparison with the live index finds no difference.
JOBS_DAY = text("(date_trunc('day', (created_at AT TIME ZONE 'UTC'))::date)")
ATTEMPTS_DAY = text("(date_trunc('day', (started_at AT TIME ZONE 'UTC'))::date)")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB().with_variant(JSON(), "sqlite")}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    complexity: Mapped[str] = mapped_column(String(16), nullable=False)
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    priority: Mapped[str] = mapped_column(String(8), nullable=False)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    route_reason: Mapped[str | None] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    response_text: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    served_model: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default="0"
    )
    cache_read_input_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default="0"
    )
    cost_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    cost_unknown: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replay_of: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # why a queued job waits until next_run_at (held, paused, capacity, circuit, retry)
    wait_reason: Mapped[str | None] = mapped_column(Text)
    # routing (migration 0007): the classifier's score; a second opinion still to ask
    # (farm.routing.second_opinion); the simple model a job escalated from
    # (farm.routing.escalation); the calls made to route it (a second opinion, an
    # escalated answer), which the retry policy and the poison count leave out
    route_score: Mapped[float | None] = mapped_column(Float)
    second_opinion: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                 server_default=text("false"))
    escalated_from: Mapped[str | None] = mapped_column(String(128))
    routing_calls: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # idempotent submit (migration 0008, farm.reliability.idempotency): the caller's key,
    # unique per tenant (ux_jobs_idempotency), and the hash of the request it came with
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # result memoization (migration 0009, farm.memo): the hash of the body the provider got
    # (or would have got); a job served from an earlier identical job's answer without a
    # call; that answer's cost, which this job did not pay
    memo_key: Mapped[str | None] = mapped_column(String(64))
    cache_hit: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                            server_default=text("false"))
    saved_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    # Message Batches (migration 0010, farm.batches): the job waits for a batch (queued,
    # never published); batch_items says which batch carries each of its attempts
    batched: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','running','succeeded','failed','dead','cancelled')",
            name="ck_jobs_status",
        ),
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_tenant_created_at", "tenant", "created_at"),
        Index(
            "ix_jobs_active",
            "status",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # a filter on the report views' day
        Index("ix_jobs_created_day", JOBS_DAY),
        Index("ux_jobs_idempotency", "tenant", "idempotency_key", unique=True,
              postgresql_where=text("idempotency_key IS NOT NULL")),
        # the answers a memoizing job may reuse (farm.memo.store.lookup)
        Index("ix_jobs_memo", "tenant", "memo_key", "finished_at", postgresql_where=text(
            "memo_key IS NOT NULL AND status = 'succeeded' AND NOT cache_hit")),
        # the batch collector's claim: a model's waiting jobs, oldest first
        Index("ix_jobs_batch_pending", "model", "created_at",
              postgresql_where=text("batched AND status = 'queued'")),
    )


class Attempt(Base):
    """One provider call: exactly one row per (job, attempt number)."""

    __tablename__ = "attempts"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)  # ok | error type
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default="0"
    )
    cache_read_input_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default="0"
    )
    cost_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        Index("ix_attempts_started_at", "started_at"),
        Index("ix_attempts_started_day", ATTEMPTS_DAY),
    )


class DeadLetter(Base):
    """A job that ended without a result: fatal error, attempts exhausted, or invalid."""

    __tablename__ = "dead_letters"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    queue: Mapped[str] = mapped_column(String(64), nullable=False)
    error_class: Mapped[str] = mapped_column(String(32), nullable=False)
    error_message: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    first_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    dead_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    replayed_as: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_dead_letters_dead_at", "dead_at"),)


class BudgetRow(Base):
    """A budget as an operator set it (farm.costs.budgets.Budget; `farm budget set`)."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    period: Mapped[str] = mapped_column(String(8), nullable=False)
    limit_usd: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    mode: Mapped[str] = mapped_column(String(8), nullable=False)
    alert_share: Mapped[float | None] = mapped_column(Float)
    on_exceed: Mapped[str] = mapped_column(String(8), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint("scope IN ('global','tenant','queue','model')", name="ck_budgets_scope"),
        CheckConstraint("period IN ('hour','day','month')", name="ck_budgets_period"),
        CheckConstraint("mode IN ('hard','soft')", name="ck_budgets_mode"),
        CheckConstraint("on_exceed IN ('wait','fail')", name="ck_budgets_on_exceed"),
        CheckConstraint("limit_usd > 0", name="ck_budgets_limit"),
    )


class RouteFeedback(Base):
    """What a job turned out to need, for the router to learn from (farm.routing)."""

    __tablename__ = "route_feedback"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint("label IN ('simple','complex')", name="ck_route_feedback_label"),
    )


class Batch(Base):
    """One Message Batch (farm.batches): its row exists, status creating, before the
    provider is asked; the provider's id is kept as soon as it is known."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    provider_id: Mapped[str | None] = mapped_column(Text, unique=True)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    request_count: Mapped[int] = mapped_column(Integer, nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    request_counts: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_poll_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    polls: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(
            "status IN ('creating','in_progress','canceling','ended','done','failed')",
            name="ck_batches_status",
        ),
        Index("ix_batches_open", "next_poll_at", postgresql_where=text(
            "status IN ('creating', 'in_progress', 'canceling', 'ended')")),
        Index("ix_batches_created_at", "created_at"),
    )


class BatchItem(Base):
    """One request of a batch: its job (the custom_id) and which attempt of the job it is."""

    __tablename__ = "batch_items"

    batch_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    worst_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    # a memoizing job's memo key (farm.batches.memo): identical jobs wait while it is in flight
    memo_key: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_batch_items_job_id", "job_id"),)


def make_engine(
    database_url: str, *, pool_size: int = 10, max_overflow: int = 20,
    autocommit: bool = False, pre_ping: bool = True,
) -> Engine:
    """One engine per process; connections are opened lazily on first use.

    The worker's engine skips the pre-ping (a round trip per checkout): there a dead
    connection raises on use, is discarded, and the store's retry takes a fresh one.
    A statement's error never carries its parameters (requests, prompts, responses):
    ``hide_parameters`` keeps them out of the exception's text, hence out of logs.
    """
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        pool_pre_ping=pre_ping,
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        hide_parameters=True,
    )
