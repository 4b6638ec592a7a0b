"""Following the batches in flight: each due batch is taken for a while (farm.batches.rows:
SKIP LOCKED, so two workers never poll the same one at once, and a poller that dies gives
it back), retrieved from the provider, and polled again later with backoff
(farm.batches.policy.next_poll_s). An ended batch's results are recorded
(farm.batches.results), then the batch is done. A batch whose every job has been cancelled
meanwhile is cancelled at the provider: it serves nobody, and what it has not processed yet
is not billed.

A restarted worker needs nothing of its predecessor: the batches' provider ids are in
Postgres, and any worker polls any batch.
"""

from __future__ import annotations

import logging
from typing import Any

import anthropic
from psycopg import Connection

from farm.batches import policy, results, rows
from farm.batches.context import Batching

log = logging.getLogger("farm.batches")


def lease_s(b: Batching) -> float:
    """How long a poller holds a batch (its results' recording included, renewed every
    chunk): longer than any one provider call."""
    return max(60.0, 2 * b.settings.request_timeout)


def poll_due(b: Batching, conn: Connection[Any], limit: int = 10) -> int:
    """Poll the batches due; returns how many were polled."""
    batches = rows.due(conn, lease_s=lease_s(b), limit=limit)
    for batch in batches:
        try:
            poll(b, conn, batch)
        except Exception as exc:  # the next poll tries again (its lease runs out first)
            log.warning("batch %s: poll failed: %s: %s", batch.provider_id,
                        type(exc).__name__, str(exc)[:200])
    return len(batches)


def poll(b: Batching, conn: Connection[Any], batch: rows.BatchRow) -> None:
    assert batch.provider_id is not None
    wait = policy.next_poll_s(batch.polls, b.config)
    try:
        got = b.client.messages.batches.retrieve(batch.provider_id)
    except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
        log.warning("batch %s: retrieve failed (%s): polled again in %.0fs",
                    batch.provider_id, getattr(exc, "status_code", type(exc).__name__), wait)
        rows.progress(conn, batch.id, batch.status, None, wait)
        return
    counts = got.request_counts.model_dump()
    if got.processing_status == "ended":
        rows.ended(conn, batch.id, counts, got.ended_at, lease_s(b))
        new = results.record_all(b, conn, batch, lease_s(b))
        rows.done(conn, batch.id)
        log.info("batch %s ended (%s): %d result(s) recorded", batch.provider_id,
                 ", ".join(f"{k} {v}" for k, v in counts.items() if v), new)
        return
    status = got.processing_status
    if status == "in_progress" and rows.all_cancelled(conn, batch.id):
        b.client.messages.batches.cancel(batch.provider_id)
        status = "canceling"
        log.info("batch %s: every job of it was cancelled: batch cancelled",
                 batch.provider_id)
    rows.progress(conn, batch.id, status, counts, wait)
