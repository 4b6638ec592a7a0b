"""Memoization in Postgres: the answer a job may reuse, a hit recorded, a key remembered.

An answer that may serve is a job of the same tenant with the same ``memo_key`` that
succeeded from its own call (not a hit itself) and finished within the TTL: the newest such
(the partial index ix_jobs_memo). A hit ends the job succeeded with the answer copied
(response, stop reason, served model), no tokens, cost unchanged (0 for a job that made no
call), ``cache_hit`` true and ``saved_usd`` the original's cost (None when that is unknown);
the attempt its start counted is given back, as for any job that ends without a call. A job
waiting for a Message Batch is answered the same way at its flush (farm.batches.memo),
before it starts: it counted no attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import psycopg

from farm.store.db import Database
from farm.store.jobs import StartedJob, fetch_one, status_in

LOOKUP_SQL = """
    SELECT id, response_text, stop_reason, served_model, cost_usd FROM jobs
    WHERE tenant = %(tenant)s AND memo_key = %(key)s AND status = 'succeeded'
      AND NOT cache_hit AND finished_at >= now() - make_interval(secs => %(ttl_s)s)
    ORDER BY finished_at DESC LIMIT 1
"""

# what a hit writes: the original's answer, no call's tokens or cost, what it saved
HIT_SET = """status = 'succeeded', response_text = %(response_text)s,
        stop_reason = %(stop_reason)s, served_model = %(served_model)s,
        cost_usd = CASE WHEN cost_unknown THEN NULL ELSE coalesce(cost_usd, 0) END,
        cache_hit = true, saved_usd = %(saved_usd)s, memo_key = %(key)s, error = NULL,
        finished_at = now(), lease_until = NULL, next_run_at = NULL, wait_reason = NULL"""

# a started job: the attempt its start counted is given back
HIT_SQL = f"""
    UPDATE jobs SET {HIT_SET}, attempts = attempts - 1
    WHERE id = %(job_id)s AND {status_in("running")} AND attempts = %(attempt)s
    RETURNING id
"""

# a job waiting for a Message Batch (farm.batches.memo): it never started, no attempt counted
WAITING_HIT_SQL = f"""
    UPDATE jobs SET {HIT_SET}, started_at = coalesce(started_at, now())
    WHERE id = %(job_id)s AND batched AND status = 'queued' AND attempts = %(attempt)s
    RETURNING created_at
"""

# the newest answer for each of many (tenant, key, TTL): one statement (farm.batches.memo)
LOOKUP_MANY_SQL = """
    SELECT w.i, j.id, j.response_text, j.stop_reason, j.served_model, j.cost_usd
    FROM unnest(CAST(%(tenants)s AS text[]), CAST(%(keys)s AS text[]),
                CAST(%(ttls)s AS float8[]))
         WITH ORDINALITY AS w(tenant, key, ttl_s, i)
    CROSS JOIN LATERAL (
        SELECT id, response_text, stop_reason, served_model, cost_usd FROM jobs
        WHERE tenant = w.tenant AND memo_key = w.key AND status = 'succeeded'
          AND NOT cache_hit AND finished_at >= now() - make_interval(secs => w.ttl_s)
        ORDER BY finished_at DESC LIMIT 1) j
"""

REMEMBER_SQL = """
    UPDATE jobs SET memo_key = %(key)s
    WHERE id = %(job_id)s AND status = 'succeeded' AND NOT cache_hit
    RETURNING id
"""


@dataclass(frozen=True)
class Original:
    """The earlier job whose answer a hit reuses."""

    id: uuid.UUID
    response_text: str | None
    stop_reason: str | None
    served_model: str | None
    cost_usd: Decimal | None  # what it cost; None: unknown


def lookup(db: Database, tenant: str, key: str, ttl_s: float, *,
           patience_s: float = 0.0) -> Original | None:
    """The newest answer of ``tenant`` with ``key`` at most ``ttl_s`` old, if any."""
    row = fetch_one(db, LOOKUP_SQL, {"tenant": tenant, "key": key, "ttl_s": ttl_s},
                    patience_s)
    if row is None:
        return None
    job_id, text, stop_reason, served_model, cost = row
    return Original(id=job_id, response_text=text, stop_reason=stop_reason,
                    served_model=served_model, cost_usd=None if cost is None else Decimal(cost))


def lookup_many(conn: psycopg.Connection[Any], wanted: Sequence[tuple[str, str, float]]
                ) -> list[Original | None]:
    """``lookup`` of each (tenant, key, ttl_s) of ``wanted``, in one statement on ``conn``."""
    found: list[Original | None] = [None] * len(wanted)
    if not wanted:
        return found
    rows = conn.execute(LOOKUP_MANY_SQL, {"tenants": [t for t, _, _ in wanted],
                                          "keys": [k for _, k, _ in wanted],
                                          "ttls": [float(s) for _, _, s in wanted]})
    for i, job_id, text_, stop_reason, served_model, cost in rows:
        found[int(i) - 1] = Original(id=job_id, response_text=text_, stop_reason=stop_reason,
                                     served_model=served_model,
                                     cost_usd=None if cost is None else Decimal(cost))
    return found


def record_hit(db: Database, job: StartedJob, key: str, original: Original, *,
               patience_s: float = 0.0) -> bool:
    """End the started ``job`` as a hit on ``original``'s answer; False when it is no longer
    this start's to end (cancelled meanwhile, or started again elsewhere)."""
    row = fetch_one(db, HIT_SQL, {
        "job_id": job.id, "attempt": job.attempt, "key": key,
        "response_text": original.response_text, "stop_reason": original.stop_reason,
        "served_model": original.served_model, "saved_usd": original.cost_usd,
    }, patience_s)
    return row is not None


def record_waiting_hit(db: Database, job_id: uuid.UUID, attempts: int, key: str,
                       original: Original, *, patience_s: float = 0.0) -> datetime | None:
    """End a job waiting for a Message Batch (with ``attempts`` so far) as a hit on
    ``original``'s answer; returns its created_at, None when it no longer waits (cancelled
    meanwhile)."""
    row = fetch_one(db, WAITING_HIT_SQL, {
        "job_id": job_id, "attempt": attempts, "key": key,
        "response_text": original.response_text, "stop_reason": original.stop_reason,
        "served_model": original.served_model, "saved_usd": original.cost_usd,
    }, patience_s)
    return None if row is None else cast(datetime, row[0])


def remember(db: Database, job_id: uuid.UUID, key: str, *, patience_s: float = 0.0) -> bool:
    """Record ``key`` on a job that succeeded from its own call, for its answer to serve later
    jobs; False when the job is not (or no longer) such a job."""
    return fetch_one(db, REMEMBER_SQL, {"job_id": job_id, "key": key},
                     patience_s) is not None
