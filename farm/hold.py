"""The farm-wide hold: when the organisation's spend limit is reached, no job can succeed
until someone raises it, so every worker holds its jobs (queued, no attempt used, no call
made) instead of burning them. The flag lives in Redis, next to the queues; `farm hold`
shows it and `farm hold --release` lifts it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

KEY = "farm:hold"


def set_hold(broker: Any, reason: str) -> None:
    broker.set(KEY, json.dumps({"reason": reason, "since": time.time()}))


def release(broker: Any) -> bool:
    return bool(broker.delete(KEY))


def current(broker: Any) -> dict[str, Any] | None:
    raw = broker.get(KEY)
    if raw is None:
        return None
    try:
        value: dict[str, Any] = json.loads(raw)
    except ValueError:
        value = {"reason": "unreadable hold flag", "since": None}
    return value


class HoldCheck:
    """A worker process's view of the flag, read from Redis at most every `every_s`."""

    def __init__(self, broker: Any, every_s: float = 2.0) -> None:
        self._broker, self._every = broker, every_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._held: dict[str, Any] | None = None

    def held(self) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self._every:
                self._checked = now
                with contextlib.suppress(Exception):  # broker trouble: keep the last answer
                    self._held = current(self._broker)
            return self._held

    def set(self, reason: str) -> None:
        set_hold(self._broker, reason)
        with self._lock:
            self._held, self._checked = {"reason": reason}, time.monotonic()
