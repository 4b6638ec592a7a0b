"""Helpers of the Message Batches tests: the simulator in this process, its admin
endpoints, a worker's batch context, and waiting for a condition to be observed (never a
sleep then an assert)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests_sim import admin, in_process_sim

from farm.batches.context import Batching
from farm.batches.policy import config_of
from farm.reliability import dlq
from farm.reliability.policies import RetryPolicy
from farm.settings import Settings
from farm.worker import runtime as rt

__all__ = ["admin", "batching", "in_process_sim", "until"]


def until(missing: Callable[[], str | None], timeout: float, interval: float = 0.1) -> None:
    """Until ``missing()`` returns None; after ``timeout`` its last answer is the
    AssertionError's message."""
    deadline = time.monotonic() + timeout
    while (gap := missing()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"not observed within {timeout:.0f}s: {gap}")
        time.sleep(interval)


@contextmanager
def batching(settings: Settings) -> Iterator[Batching]:
    """A worker's batch context on ``settings`` (a quick retry policy; dead letters
    recorded in the table only), with no batch rows before or after: each test sees its own
    batches and leaves none to the loops."""
    runtime = rt.build(settings, {"default": RetryPolicy(max_attempts=2, backoff_base_s=0.01,
                                                         backoff_cap_s=0.02)})

    def dead_letter(job_id: uuid.UUID, queue: str, error_class: str, message: str) -> None:
        dlq.record(made.db, job_id, error_class, message)

    def forget() -> None:
        with made.db.connect() as conn:
            conn.execute("DELETE FROM batches")

    made = Batching(runtime, config_of(settings), dead_letter)
    forget()
    try:
        yield made
    finally:
        forget()
        made.db.close()
        runtime.client.close()
