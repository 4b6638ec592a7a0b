"""The batch loop of a worker process: two daemon threads, started when the worker is ready
(farm.worker.wiring) and stopped with the process's runtime.

- ``batch-collector``, every FARM_BATCH_TICK_S: the rows left creating by a crash
  (farm.batches.reconcile), then each model whose waiting jobs are due to flush
  (farm.batches.collector; none while the farm is on hold);
- ``batch-poller``, as often: the batches in flight that are due for a poll
  (farm.batches.poller), their results recorded when they end.

Every worker runs them; the flush lock per model and SKIP LOCKED on the batches' rows mean
that many workers never create or record anything twice, and that a worker's death leaves
nothing that the others do not take over.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery

from farm.batches import collector, policy, poller, store
from farm.batches.context import Batching
from farm.batches.reconcile import Reconciler
from farm.worker import endings
from farm.worker import runtime as rt

log = logging.getLogger("farm.batches")


def batching(app: Celery, runtime: rt.Runtime) -> Batching:
    """The batch loop's context for a worker process: dead letters go out on ``app``."""
    def dead_letter(job_id: uuid.UUID, queue: str, error_class: str, message: str) -> None:
        endings.dead_letter(app, runtime, job_id, queue, error_class, message)

    return Batching(runtime, policy.config_of(runtime.settings), dead_letter)


def collect(b: Batching, reconciler: Reconciler) -> list[uuid.UUID]:
    """One round of the collector; returns the batch rows written."""
    made: list[uuid.UUID] = []
    with b.db.connect() as conn:
        reconciler.run(conn)
        if b.runtime.hold.held() is not None:
            return made  # the farm is on hold (spend limit): nothing new goes out
        for waiting in store.waiting(conn):
            if policy.flush_due(waiting, b.config) is not None:
                made += collector.flush(b, conn, waiting.model)
    return made


def poll(b: Batching) -> int:
    with b.db.connect() as conn:
        return poller.poll_due(b, conn)


def start(b: Batching, stop: threading.Event) -> list[threading.Thread]:
    """The collector and poller threads (daemons), until ``stop`` is set."""
    reconciler = Reconciler(b)

    def loop(name: str, step: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            while not stop.wait(b.config.tick_s):
                try:
                    step()
                except Exception as exc:  # a database or provider outage: next round
                    log.warning("%s failed: %s: %s", name, type(exc).__name__,
                                str(exc)[:200])

        thread = threading.Thread(target=run, name=f"farm-{name}", daemon=True)
        thread.start()
        return thread

    return [loop("batch-collector", lambda: collect(b, reconciler)),
            loop("batch-poller", lambda: poll(b))]


def start_for(app: Celery, runtime: rt.Runtime) -> list[threading.Thread]:
    """Start the batch loop of a worker process (its runtime's stop event ends it)."""
    return start(batching(app, runtime), runtime.stop)
