"""Postgres schema (SQLAlchemy 2 Core tables) and engine construction.

The schema is created by Alembic (``farm migrate``); these tables mirror it, and
tests/integration/test_migrations.py checks that they agree. Money is ``NUMERIC(18, 10)``,
read as ``Decimal``. Core tables, not ORM classes: the farm writes SQL and never loads
objects, and a worker that imports no ``sqlalchemy.orm`` holds 5.3 MB less
(ops/bench_imports.py).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import Engine

MONEY = Numeric(18, 10)
DOCUMENT = JSONB().with_variant(JSON(), "sqlite")  # a JSON object (a request, counts)
ID = UUID(as_uuid=True)

# The report views' UTC day, indexed by migration 0004; written the way pg_get_indexdef
# prints it back, so that alembic's comparison with the live index finds no difference.
JOBS_DAY = text("(date_trunc('day', (created_at AT TIME ZONE 'UTC'))::date)")
ATTEMPTS_DAY = text("(date_trunc('day', (started_at AT TIME ZONE 'UTC'))::date)")

metadata = MetaData()


def _time(name: str, *, nullable: bool = True, now: bool = False) -> Column[object]:
    """A timestamp with time zone; ``now``: defaults to the insert's time."""
    return Column(name, DateTime(timezone=True), nullable=nullable,
                  server_default=func.now() if now else None)


def _count(name: str) -> Column[object]:
    return Column(name, BigInteger, nullable=False, server_default="0")


def _flag(name: str) -> Column[object]:
    return Column(name, Boolean, nullable=False, server_default=text("false"))


def _job_id() -> Column[object]:
    """A row's job (part of its primary key): its jobs.id, deleted with it."""
    return Column("job_id", ID, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)


jobs = Table(
    "jobs", metadata,
    Column("id", ID, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("complexity", String(16), nullable=False),
    Column("queue", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("route_reason", Text),
    Column("request", DOCUMENT, nullable=False),
    Column("response_text", Text),
    Column("stop_reason", String(32)),
    Column("served_model", String(128)),
    _count("input_tokens"),
    _count("output_tokens"),
    _count("cache_creation_input_tokens"),
    _count("cache_read_input_tokens"),
    Column("cost_usd", MONEY),
    _flag("cost_unknown"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    _time("created_at", nullable=False, now=True),
    _time("started_at"),
    _time("finished_at"),
    Column("replay_of", ID),
    _time("lease_until"),
    _time("next_run_at"),
    # why a queued job waits until next_run_at (held, paused, capacity, circuit, retry)
    Column("wait_reason", Text),
    # routing (migration 0007): the classifier's score; a second opinion still to ask
    # (farm.routing.second_opinion); the simple model a job escalated from
    # (farm.routing.escalation); the calls made to route it (a second opinion, an
    # escalated answer), which the retry policy and the poison count leave out
    Column("route_score", Float),
    _flag("second_opinion"),
    Column("escalated_from", String(128)),
    Column("routing_calls", Integer, nullable=False, server_default="0"),
    # idempotent submit (migration 0008, farm.reliability.idempotency): the caller's key,
    # unique per tenant (ux_jobs_idempotency), and the hash of the request it came with
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),
    # result memoization (migration 0009, farm.memo): the hash of the body the provider got
    # (or would have got); a job served from an earlier identical job's answer without a
    # call; that answer's cost, which this job did not pay
    Column("memo_key", String(64)),
    _flag("cache_hit"),
    Column("saved_usd", MONEY),
    # Message Batches (migration 0010, farm.batches): the job waits for a batch (queued,
    # never published); batch_items says which batch carries each of its attempts
    _flag("batched"),
    CheckConstraint(
        "status IN ('queued','running','succeeded','failed','dead','cancelled')",
        name="ck_jobs_status",
    ),
    Index("ix_jobs_created_at", "created_at"),
    Index("ix_jobs_tenant_created_at", "tenant", "created_at"),
    Index("ix_jobs_active", "status", postgresql_where=text("status IN ('queued', 'running')")),
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

# One provider call: exactly one row per (job, attempt number)
attempts = Table(
    "attempts", metadata,
    _job_id(),
    Column("attempt", Integer, primary_key=True),
    Column("queue", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("outcome", String(32), nullable=False),  # ok | error type
    Column("http_status", Integer),
    Column("error", Text),
    _count("input_tokens"),
    _count("output_tokens"),
    _count("cache_creation_input_tokens"),
    _count("cache_read_input_tokens"),
    Column("cost_usd", MONEY),
    Column("latency_ms", Integer),
    Column("request_id", String(128)),
    _time("started_at", nullable=False),
    _time("finished_at", nullable=False),
    Index("ix_attempts_started_at", "started_at"),
    Index("ix_attempts_started_day", ATTEMPTS_DAY),
)

# A job that ended without a result: fatal error, attempts exhausted, or invalid
dead_letters = Table(
    "dead_letters", metadata,
    _job_id(),
    Column("queue", String(64), nullable=False),
    Column("error_class", String(32), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    _time("first_failure_at", nullable=False),
    _time("last_failure_at", nullable=False),
    _time("dead_at", nullable=False, now=True),
    Column("replayed_as", ID),
    _time("replayed_at"),
    Index("ix_dead_letters_dead_at", "dead_at"),
)

# A budget as an operator set it (farm.costs.budgets.Budget; `farm budget set`)
budgets = Table(
    "budgets", metadata,
    Column("id", String(200), primary_key=True),
    Column("scope", String(16), nullable=False),
    Column("name", String(128), nullable=False),
    Column("period", String(8), nullable=False),
    Column("limit_usd", MONEY, nullable=False),
    Column("mode", String(8), nullable=False),
    Column("alert_share", Float),
    Column("on_exceed", String(8), nullable=False),
    _time("updated_at", nullable=False, now=True),
    CheckConstraint("scope IN ('global','tenant','queue','model')", name="ck_budgets_scope"),
    CheckConstraint("period IN ('hour','day','month')", name="ck_budgets_period"),
    CheckConstraint("mode IN ('hard','soft')", name="ck_budgets_mode"),
    CheckConstraint("on_exceed IN ('wait','fail')", name="ck_budgets_on_exceed"),
    CheckConstraint("limit_usd > 0", name="ck_budgets_limit"),
)

# What a job turned out to need, for the router to learn from (farm.routing)
route_feedback = Table(
    "route_feedback", metadata,
    _job_id(),
    Column("label", String(16), nullable=False),
    _time("created_at", nullable=False, now=True),
    CheckConstraint("label IN ('simple','complex')", name="ck_route_feedback_label"),
)

# One Message Batch (farm.batches): its row exists, status creating, before the provider
# is asked; the provider's id is kept as soon as it is known
batches = Table(
    "batches", metadata,
    Column("id", ID, primary_key=True),
    Column("provider_id", Text, unique=True),
    Column("model", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("request_count", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("request_counts", DOCUMENT),
    _time("created_at", nullable=False, now=True),
    _time("submitted_at"),
    _time("ended_at"),
    _time("next_poll_at"),
    Column("polls", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    CheckConstraint(
        "status IN ('creating','in_progress','canceling','ended','done','failed')",
        name="ck_batches_status",
    ),
    Index("ix_batches_open", "next_poll_at", postgresql_where=text(
        "status IN ('creating', 'in_progress', 'canceling', 'ended')")),
    Index("ix_batches_created_at", "created_at"),
)

# One request of a batch: its job (the custom_id) and which attempt of the job it is
batch_items = Table(
    "batch_items", metadata,
    Column("batch_id", ID, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    _job_id(),
    Column("attempt", Integer, nullable=False),
    Column("worst_usd", MONEY),
    # a memoizing job's memo key (farm.batches.memo): identical jobs wait while it is in
    # flight
    Column("memo_key", String(64)),
    Index("ix_batch_items_job_id", "job_id"),
)


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
