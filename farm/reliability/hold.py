"""The farm-wide hold: when the organisation's spend limit is reached, no job can succeed
until someone raises it, so every worker holds its jobs (queued, no attempt used, no call
made) instead of burning them. The flag lives in Redis, next to the queues; `farm hold`
shows it and `farm hold --release` lifts it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("farm.hold")
KEY = "farm:hold"
T = TypeVar("T")


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


class Polled(Generic[T]):
    """A value kept in Redis, read by a worker process at most every `every_s` whatever
    number of threads ask; on broker trouble the last value read stays."""

    def __init__(self, read: Callable[[], T], initial: T, every_s: float) -> None:
        self._read, self._value, self._every = read, initial, every_s
        self._lock = threading.Lock()
        self._checked = float("-inf")

    def get(self) -> T:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self._every:
                self._refresh(now)
            return self._value

    def fresh(self) -> T:
        """The value read now (the rare path: before acting on a value that says "wait", so
        that a release or a resume acts at once, not after the cache's interval)."""
        with self._lock:
            self._refresh(time.monotonic())
            return self._value

    def _refresh(self, now: float) -> None:
        self._checked = now
        try:
            self._value = self._read()
        except Exception as exc:
            log.warning("could not read from Redis: %s", type(exc).__name__)

    def put(self, value: T) -> None:
        """A value this process has just written itself."""
        with self._lock:
            self._value, self._checked = value, time.monotonic()


class HoldCheck:
    """A worker process's view of the flag, read from Redis at most every `every_s`."""

    def __init__(self, broker: Any, every_s: float = 2.0) -> None:
        self._broker = broker
        self._flag: Polled[dict[str, Any] | None] = Polled(lambda: current(broker), None,
                                                           every_s)

    def held(self) -> dict[str, Any] | None:
        # the common answer (not held) from the cache; "held" is confirmed in Redis
        return None if self._flag.get() is None else self._flag.fresh()

    def set(self, reason: str) -> None:
        set_hold(self._broker, reason)
        self._flag.put({"reason": reason})
