"""Memoization in Postgres: the answer a job may reuse, a hit recorded, a key remembered.

An answer that may serve is a job of the same tenant with the same ``memo_key`` that
succeeded from its own call (not a hit itself) and finished within the TTL: the newest such
(the partial index ix_jobs_memo). A hit ends the job succeeded with the answer copied
(response, stop reason, served model), no tokens, cost unchanged (0 for a job that made no
call), ``cache_hit`` true and ``saved_usd`` the original's cost (None when that is unknown);
the attempt its start counted is given back, as for any job that ends without a call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.engine import Engine

from farm.store.jobs import StartedJob, fetch_one

LOOKUP_SQL = """
    SELECT id, response_text, stop_reason, served_model, cost_usd FROM jobs
    WHERE tenant = %(tenant)s AND memo_key = %(key)s AND status = 'succeeded'
      AND NOT cache_hit AND finished_at >= now() - make_interval(secs => %(ttl_s)s)
    ORDER BY finished_at DESC LIMIT 1
"""

HIT_SQL = """
    UPDATE jobs SET status = 'succeeded', response_text = %(response_text)s,
        stop_reason = %(stop_reason)s, served_model = %(served_model)s,
        cost_usd = CASE WHEN cost_unknown THEN NULL ELSE coalesce(cost_usd, 0) END,
        cache_hit = true, saved_usd = %(saved_usd)s, memo_key = %(key)s, error = NULL,
        attempts = attempts - 1, finished_at = now(), lease_until = NULL, next_run_at = NULL,
        wait_reason = NULL
    WHERE id = %(job_id)s AND status = 'running' AND attempts = %(attempt)s
    RETURNING id
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


def lookup(engine: Engine, tenant: str, key: str, ttl_s: float, *,
           patience_s: float = 0.0) -> Original | None:
    """The newest answer of ``tenant`` with ``key`` at most ``ttl_s`` old, if any."""
    row = fetch_one(engine, LOOKUP_SQL, {"tenant": tenant, "key": key, "ttl_s": ttl_s},
                    patience_s)
    if row is None:
        return None
    job_id, text, stop_reason, served_model, cost = row
    return Original(id=job_id, response_text=text, stop_reason=stop_reason,
                    served_model=served_model, cost_usd=None if cost is None else Decimal(cost))


def record_hit(engine: Engine, job: StartedJob, key: str, original: Original, *,
               patience_s: float = 0.0) -> bool:
    """End the started ``job`` as a hit on ``original``'s answer; False when it is no longer
    this start's to end (cancelled meanwhile, or started again elsewhere)."""
    row = fetch_one(engine, HIT_SQL, {
        "job_id": job.id, "attempt": job.attempt, "key": key,
        "response_text": original.response_text, "stop_reason": original.stop_reason,
        "served_model": original.served_model, "saved_usd": original.cost_usd,
    }, patience_s)
    return row is not None


def remember(engine: Engine, job_id: uuid.UUID, key: str, *, patience_s: float = 0.0) -> bool:
    """Record ``key`` on a job that succeeded from its own call, for its answer to serve later
    jobs; False when the job is not (or no longer) such a job."""
    return fetch_one(engine, REMEMBER_SQL, {"job_id": job_id, "key": key},
                     patience_s) is not None
