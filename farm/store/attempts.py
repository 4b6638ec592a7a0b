"""Recording a provider call: the attempt row and the job's move, in one statement, fenced.

A result moves its job on only if it belongs to the job's current generation (no later
start happened) and the job is not finished: ``farm.reliability.fencing``'s rule, which
``RECORD_SQL`` runs in Postgres under the job's row lock. A late result is still recorded,
with its tokens and cost (the provider billed them), as a ``superseded`` attempt: it adds
to the job's totals and changes nothing else. A second delivery of the same attempt inserts
nothing and so changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from farm.jobs import JobStatus, Usage
from farm.reliability.fencing import SUPERSEDED, Verdict
from farm.store.db import Database, compact
from farm.store.jobs import StartedJob, fetch_one


@dataclass(frozen=True)
class Move:
    """What a current routing call changes on its job besides the usual (a second opinion, an
    escalation, an escalation the cost cap stopped): each field None/False/"" changes
    nothing."""

    queue: str | None = None  # the job's new queue and model
    model: str | None = None
    note: str = ""  # appended to route_reason
    escalated_from: str | None = None
    routing_call: bool = False  # the attempt routed the job: routing_calls + 1
    clear_second_opinion: bool = False


@dataclass(frozen=True)
class Outcome:
    """One provider call's outcome and the job status it leads to."""

    status: JobStatus  # the job's next status: succeeded, failed, dead, or queued (retry)
    model: str
    outcome: str  # "ok" or an ErrorKind value
    started_at: datetime
    latency_s: float
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = Decimal(0)
    http_status: int | None = None
    error: str | None = None
    request_id: str | None = None
    response_text: str | None = None
    stop_reason: str | None = None
    retry_in_s: float | None = None  # with status queued: when the retry is due
    wait_reason: str | None = None  # with retry_in_s: why it waits (default: the backoff)
    move: Move = field(default_factory=Move)


@dataclass(frozen=True)
class Recorded:
    status: JobStatus  # the job's status afterwards
    verdict: Verdict  # SUPERSEDED: a late result, which moved nothing

    @property
    def current(self) -> bool:
        return self.verdict is Verdict.CURRENT


# fencing.verdict and fencing.next_status, in SQL (the tests check they agree); compact: within
# the length psycopg caches its conversion of (farm.store.db)
RECORD_SQL = compact("""
    WITH job AS (
        SELECT id, attempts, status,
               attempts = %(attempt)s AND status IN ('running', 'queued', 'cancelled')
                   AS current
        FROM jobs WHERE id = %(job_id)s FOR UPDATE
    ), ins AS (
        INSERT INTO attempts (job_id, attempt, queue, model, outcome, http_status, error,
            input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
            cost_usd, latency_ms, request_id, started_at, finished_at)
        SELECT job.id, %(attempt)s, %(queue)s, %(model)s,
            CASE WHEN job.current THEN %(outcome)s ELSE 'superseded' END, %(http_status)s,
            CASE WHEN job.current THEN CAST(%(error)s AS text)
                 ELSE format('late %%s of attempt %%s: the job had moved on (attempt %%s, %%s)',
                             %(outcome)s, %(attempt)s, job.attempts, job.status) END,
            %(input_tokens)s, %(output_tokens)s, %(cache_creation_input_tokens)s,
            %(cache_read_input_tokens)s, %(cost_usd)s, %(latency_ms)s, %(request_id)s,
            %(started_at)s, %(finished_at)s
        FROM job
        ON CONFLICT (job_id, attempt) DO NOTHING
        RETURNING job_id, outcome <> 'superseded' AS current, input_tokens, output_tokens,
                  cache_creation_input_tokens, cache_read_input_tokens, cost_usd
    )
    UPDATE jobs SET
        status = CASE WHEN ins.current AND jobs.status IN ('running', 'queued')
                      THEN %(status)s ELSE jobs.status END,
        input_tokens = jobs.input_tokens + ins.input_tokens,
        output_tokens = jobs.output_tokens + ins.output_tokens,
        cache_creation_input_tokens =
            jobs.cache_creation_input_tokens + ins.cache_creation_input_tokens,
        cache_read_input_tokens = jobs.cache_read_input_tokens + ins.cache_read_input_tokens,
        cost_unknown = jobs.cost_unknown OR ins.cost_usd IS NULL,
        cost_usd = CASE WHEN jobs.cost_unknown OR ins.cost_usd IS NULL THEN NULL
                        ELSE coalesce(jobs.cost_usd, 0) + ins.cost_usd END,
        response_text = CASE WHEN ins.current THEN coalesce(%(response_text)s, jobs.response_text)
                             ELSE jobs.response_text END,
        stop_reason = CASE WHEN ins.current THEN coalesce(%(stop_reason)s, jobs.stop_reason)
                           ELSE jobs.stop_reason END,
        served_model = CASE WHEN ins.current THEN coalesce(%(served_model)s, jobs.served_model)
                            ELSE jobs.served_model END,
        error = CASE WHEN ins.current THEN CAST(%(job_error)s AS text) ELSE jobs.error END,
        finished_at = CASE WHEN ins.current AND %(terminal)s
                           THEN coalesce(jobs.finished_at, now()) ELSE jobs.finished_at END,
        lease_until = CASE WHEN ins.current THEN NULL ELSE jobs.lease_until END,
        next_run_at = CASE WHEN NOT ins.current THEN jobs.next_run_at
                           WHEN %(retry_in_s)s::float8 IS NULL THEN NULL
                           ELSE now() + make_interval(secs => %(retry_in_s)s) END,
        wait_reason = CASE WHEN ins.current THEN CAST(%(wait_reason)s AS text)
                           ELSE jobs.wait_reason END,
        queue = CASE WHEN ins.current THEN coalesce(CAST(%(to_queue)s AS text), jobs.queue)
                     ELSE jobs.queue END,
        model = CASE WHEN ins.current THEN coalesce(CAST(%(to_model)s AS text), jobs.model)
                     ELSE jobs.model END,
        route_reason = CASE WHEN ins.current AND CAST(%(note)s AS text) <> ''
                            THEN coalesce(jobs.route_reason, '') || %(note)s
                            ELSE jobs.route_reason END,
        escalated_from = CASE WHEN ins.current
                              THEN coalesce(CAST(%(escalated_from)s AS text), jobs.escalated_from)
                              ELSE jobs.escalated_from END,
        second_opinion = jobs.second_opinion AND NOT (ins.current AND %(clear_opinion)s),
        routing_calls = jobs.routing_calls
                        + CASE WHEN ins.current AND %(routing_call)s THEN 1 ELSE 0 END
    FROM ins
    WHERE jobs.id = ins.job_id
    RETURNING jobs.status, ins.current
""")


def record(db: Database, job: StartedJob, outcome: Outcome, *,
           patience_s: float = 0.0) -> Recorded | None:
    """Record the attempt and, if it is current, move the job on. None when this attempt
    had been recorded already (nothing changed)."""
    usage, move = outcome.usage, outcome.move
    params = {
        "job_id": job.id, "attempt": job.attempt, "queue": job.queue, "model": outcome.model,
        "outcome": outcome.outcome, "http_status": outcome.http_status,
        "error": outcome.error, "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens, "cost_usd": outcome.cost,
        "latency_ms": round(outcome.latency_s * 1000), "request_id": outcome.request_id,
        "started_at": outcome.started_at,
        "finished_at": outcome.started_at + timedelta(seconds=outcome.latency_s),
        "status": outcome.status.value, "response_text": outcome.response_text,
        "stop_reason": outcome.stop_reason,
        # an answer moved to another model (escalated) serves nothing yet
        "served_model": outcome.model if outcome.http_status == 200
        and outcome.status is not JobStatus.QUEUED else None,
        "job_error": outcome.error if outcome.status is not JobStatus.SUCCEEDED else None,
        "terminal": outcome.status.terminal,
        "retry_in_s": outcome.retry_in_s,
        "wait_reason": None if outcome.retry_in_s is None
        else outcome.wait_reason or f"retry after {outcome.outcome} (backoff)",
        "to_queue": move.queue, "to_model": move.model,
        "note": move.note, "escalated_from": move.escalated_from,
        "clear_opinion": move.clear_second_opinion, "routing_call": move.routing_call,
    }
    row = fetch_one(db, RECORD_SQL, params, patience_s)
    if row is None:
        return None
    return Recorded(JobStatus(row[0]), Verdict.CURRENT if row[1] else Verdict.SUPERSEDED)


__all__ = ["SUPERSEDED", "Move", "Outcome", "Recorded", "record"]
