"""Helpers of the Message Batches tests: the simulator in this process, its admin
endpoints, and waiting for a condition to be observed (never a sleep then an assert)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests_sim import admin, in_process_sim

__all__ = ["admin", "in_process_sim", "until"]


def until(missing: Callable[[], str | None], timeout: float, interval: float = 0.1) -> None:
    """Until ``missing()`` returns None; after ``timeout`` its last answer is the
    AssertionError's message."""
    deadline = time.monotonic() + timeout
    while (gap := missing()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"not observed within {timeout:.0f}s: {gap}")
        time.sleep(interval)
