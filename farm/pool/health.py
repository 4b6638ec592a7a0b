"""Liveness and readiness of a worker process, for orchestrators (farm.pool.probes serves
them as /livez and /readyz). Pure verdicts over what the process observed; the probes of
the broker and the database are injected and their answers kept ``cache_s`` seconds, so a
probe storm does not become a broker storm.

Live: while the consumer runs, its event loop ticked within ``stale_after_s`` (a process
stuck in a loop or a deadlock is not); while it does not (starting, reconnecting to the
broker, draining) the process is live: restarting it would not bring the broker back, and
an orchestrator probes liveness during a drain too. Ready: live, consuming, not draining,
and the broker and the database answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Probe = Callable[[], None]  # raises when the service does not answer


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def liveness(now: float, last_tick: float | None, *, consuming: bool,
             stale_after_s: float) -> Verdict:
    """Live unless the running consumer's loop has been silent over ``stale_after_s``."""
    if not consuming:
        return Verdict(True, "ok (consumer not running: starting, reconnecting or draining)")
    since = now - last_tick if last_tick is not None else 0.0
    if since > stale_after_s:
        return Verdict(False, f"consumer loop has not ticked for {since:.0f}s "
                              f"(limit {stale_after_s:.0f}s)")
    return Verdict(True, "ok")


def readiness(live: Verdict, *, consuming: bool, draining: str | None,
              broker: str | None, database: str | None) -> Verdict:
    """``broker``/``database``: None when they answered, else why not."""
    if not live.ok:
        return live
    if draining is not None:
        return Verdict(False, f"draining: {draining}")
    if not consuming:
        return Verdict(False, "not consuming")
    if broker is not None:
        return Verdict(False, f"broker unreachable: {broker}")
    if database is not None:
        return Verdict(False, f"database unreachable: {database}")
    return Verdict(True, "ok")


class Cached:
    """A probe's last answer (None: it answered; else why not), asked again after
    ``cache_s``."""

    def __init__(self, probe: Probe, *, cache_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.probe, self.cache_s, self.clock = probe, cache_s, clock
        self._at: float | None = None
        self._answer: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            now = self.clock()
            if self._at is None or now - self._at >= self.cache_s:
                try:
                    self.probe()
                    self._answer = None
                except Exception as exc:
                    self._answer = f"{type(exc).__name__}: {str(exc)[:120]}"
                self._at = now
            return self._answer
