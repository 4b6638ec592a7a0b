"""Known jobs and calls for the grouped cost report's tests (tests/integration and
tests/ops): three UTC days, three tenants (one named with markup), a simple and a complex
queue, a fallback, an unpriced model, failed, cancelled and pending jobs, and one job the
day before the period.

Prices (farm/costs/prices.csv, USD per MTok in/out/cache write/cache read): haiku-4-5
1/5/1.25/0.10; sonnet-5-5 (the default complex queue's model) 2/10/2.5/0.2; claude-opus-9
has no price row. A job's tokens and cost are the sums of its calls' (a NULL call cost makes
the job's NULL and cost_unknown), as farm.store.attempts keeps them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, text

D0, D1, D2, D3 = date(2026, 3, 31), date(2026, 4, 1), date(2026, 4, 2), date(2026, 4, 3)
HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-5-5", "claude-opus-9"
EVIL = "<b>evil</b> & \"co\" <script>alert(1)</script>"
SIMPLE_Q, COMPLEX_Q = "haiku-simple", "sonnet-complex"


def at(day: date, hms: str) -> datetime:
    return datetime.fromisoformat(f"{day.isoformat()}T{hms}").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Call:
    model: str
    outcome: str
    latency_ms: int
    tokens: tuple[int, int, int, int] = (0, 0, 0, 0)  # in, out, cache write, cache read
    cost: Decimal | None = Decimal(0)


@dataclass(frozen=True)
class Job:
    key: str
    created: datetime
    tenant: str
    queue: str
    model: str
    status: str
    calls: tuple[Call, ...] = ()
    served: str | None = None


def _ok(model: str, latency: int, tokens: tuple[int, int, int, int], cost: str | None,
        ) -> Call:
    return Call(model, "ok", latency, tokens, None if cost is None else Decimal(cost))


JOBS: tuple[Job, ...] = (
    # before the period (since = D1)
    Job("Z0", at(D0, "23:59:59"), "acme", SIMPLE_Q, HAIKU, "succeeded",
        (_ok(HAIKU, 999, (10, 10, 0, 0), "0.00006"),), HAIKU),
    # D1
    Job("A1", at(D1, "00:00:00"), "acme", SIMPLE_Q, HAIKU, "succeeded",
        (_ok(HAIKU, 100, (1000, 500, 100, 200), "0.003645"),), HAIKU),
    Job("A2", at(D1, "08:00:00"), "acme", SIMPLE_Q, HAIKU, "succeeded",
        (Call(HAIKU, "rate_limited", 50), _ok(HAIKU, 200, (2000, 1000, 0, 0), "0.007")),
        HAIKU),
    Job("A3", at(D1, "12:00:00"), "globex", COMPLEX_Q, SONNET, "succeeded",
        (_ok(SONNET, 1000, (1000, 1000, 0, 0), "0.012"),), SONNET),
    Job("A4", at(D1, "23:59:59"), "globex", SIMPLE_Q, HAIKU, "failed",
        (Call(HAIKU, "timeout", 30000), Call(HAIKU, "bad_request", 10))),
    # D2
    Job("B1", at(D2, "01:00:00"), "acme", SIMPLE_Q, HAIKU, "succeeded",
        (_ok(HAIKU, 300, (500, 100, 0, 1000), "0.0011"),), HAIKU),
    Job("B2", at(D2, "02:00:00"), EVIL, COMPLEX_Q, SONNET, "succeeded",
        (_ok(SONNET, 2000, (100, 50, 0, 0), "0.0007"),), SONNET),
    # asked for sonnet, served by the queue's fallback after an overloaded call
    Job("B3", at(D2, "03:00:00"), "acme", COMPLEX_Q, SONNET, "succeeded",
        (Call(SONNET, "overloaded", 80), _ok(HAIKU, 400, (200, 100, 0, 0), "0.0007")),
        HAIKU),
    # a model with no price row
    Job("B4", at(D2, "04:00:00"), "acme", COMPLEX_Q, OPUS, "succeeded",
        (_ok(OPUS, 4000, (300, 100, 0, 0), None),), OPUS),
    Job("B5", at(D2, "05:00:00"), "globex", SIMPLE_Q, HAIKU, "cancelled"),
    # D3
    Job("C1", at(D3, "01:00:00"), "acme", SIMPLE_Q, HAIKU, "queued"),
    Job("C2", at(D3, "02:00:00"), "globex", SIMPLE_Q, HAIKU, "running"),
    Job("C3", at(D3, "03:00:00"), "acme", SIMPLE_Q, HAIKU, "succeeded",
        (_ok(HAIKU, 500, (100, 20, 0, 0), "0.0002"),), HAIKU),
)
COMPLEXITY = {SIMPLE_Q: "simple", COMPLEX_Q: "complex"}


def job_id(key: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"farm-grouped-report-test/{key}")


def insert(conn: Connection) -> None:
    """Every job of JOBS and its calls."""
    for job in JOBS:
        tokens = [sum(c.tokens[i] for c in job.calls) for i in range(4)]
        costs = [c.cost for c in job.calls]
        unknown = None in costs
        cost = None if unknown or not job.calls else sum(
            (c for c in costs if c is not None), Decimal(0))
        finished = job.status not in ("queued", "running")
        conn.execute(text(
            "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, "
            "request, input_tokens, output_tokens, cache_creation_input_tokens, "
            "cache_read_input_tokens, cost_usd, cost_unknown, served_model, attempts, "
            "created_at, finished_at) VALUES (:id, :status, :complexity, :queue, :model, "
            "'normal', :tenant, CAST(:request AS jsonb), :tin, :tout, :cw, :cr, :cost, "
            ":unknown, :served, :attempts, :created, :finished)"),
            {"id": job_id(job.key), "status": job.status,
             "complexity": COMPLEXITY[job.queue], "queue": job.queue, "model": job.model,
             "tenant": job.tenant, "request": json.dumps({"prompt": job.key}),
             "tin": tokens[0], "tout": tokens[1], "cw": tokens[2], "cr": tokens[3],
             "cost": cost, "unknown": unknown, "served": job.served,
             "attempts": len(job.calls), "created": job.created,
             "finished": job.created + timedelta(minutes=1) if finished else None})
        started = job.created
        for number, call in enumerate(job.calls, 1):
            conn.execute(text(
                "INSERT INTO attempts (job_id, attempt, queue, model, outcome, "
                "input_tokens, output_tokens, cache_creation_input_tokens, "
                "cache_read_input_tokens, cost_usd, latency_ms, started_at, finished_at) "
                "VALUES (:id, :n, :queue, :model, :outcome, :tin, :tout, :cw, :cr, :cost, "
                ":latency, :started, :finished)"),
                {"id": job_id(job.key), "n": number, "queue": job.queue, "model": call.model,
                 "outcome": call.outcome, "tin": call.tokens[0], "tout": call.tokens[1],
                 "cw": call.tokens[2], "cr": call.tokens[3], "cost": call.cost,
                 "latency": call.latency_ms, "started": started,
                 "finished": started + timedelta(milliseconds=call.latency_ms)})
            started += timedelta(milliseconds=call.latency_ms + 1)
