"""One worker process's pool: its slots (elastic or fixed), its health and its recycling,
composed from the pure parts and run by one watch thread. The Celery side (the consumer's
prefetch, its loop's ticks, the busy and done counts, the drain) is injected by
farm.worker.pool_step, so this reads and tests without Celery."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from farm.pool import recycle
from farm.pool.elastic import Apply, Elastic
from farm.pool.health import Cached, Probe, Verdict, liveness, readiness
from farm.pool.probes import NoFreePort, ProbeServer, serve
from farm.pool.slots import Change, SlotPolicy

log = logging.getLogger("farm.pool")

TICK_S = 1.0  # the slots' sampling
RECYCLE_EVERY_S = 5.0
STALE_AFTER_S = 60.0  # a consumer loop silent this long: not live


@dataclass(frozen=True)
class Limits:
    max_rss_mb: int = 0
    max_jobs: int = 0
    health_host: str = "127.0.0.1"
    health_port: int = 0  # 0: no probe server


class ProcessPool:
    def __init__(self, queues: tuple[str, ...], policy: SlotPolicy, limits: Limits, *,
                 apply: Apply, busy: Callable[[], int], jobs_done: Callable[[], int],
                 drain: Callable[[], None], broker: Probe, database: Probe,
                 clock: Callable[[], float] = time.monotonic,
                 rss_mb: Callable[[], float | None] = recycle.rss_mb,
                 on_change: Callable[[Change], None] | None = None) -> None:
        self.queues, self.limits = queues, limits
        self.elastic = Elastic(policy, apply, busy, clock=clock, on_change=on_change)
        self.busy, self.jobs_done, self._drain = busy, jobs_done, drain
        self._broker, self._database = Cached(broker, clock=clock), Cached(database, clock=clock)
        self._clock, self._rss_mb = clock, rss_mb
        self.started_at = clock()
        self.last_tick: float | None = None
        self.consuming = False
        self.draining: str | None = None
        self.probes: ProbeServer | None = None
        self._stop = threading.Event()
        self._started = False
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> SlotPolicy:
        return self.elastic.policy

    @property
    def slots(self) -> int:
        return self.elastic.slots

    def loop_ticked(self) -> None:
        """Called from the consumer's event loop every second (liveness)."""
        self.last_tick = self._clock()

    def live(self) -> Verdict:
        return liveness(self._clock(), self.last_tick, consuming=self.consuming,
                        stale_after_s=STALE_AFTER_S)

    def ready(self) -> Verdict:
        live = self.live()
        if not live.ok or self.draining is not None or not self.consuming:
            return readiness(live, consuming=self.consuming, draining=self.draining,
                             broker=None, database=None)
        return readiness(live, consuming=True, draining=None, broker=self._broker(),
                         database=self._database())

    def check_recycle(self) -> str | None:
        """Drain the process if it is due for recycling; the reason, or None."""
        if self.draining is not None:
            return self.draining
        reason = recycle.due(self._rss_mb(), self.jobs_done(), max_rss_mb=self.limits.max_rss_mb,
                             max_jobs=self.limits.max_jobs)
        if reason is not None:
            self.draining = reason
            log.warning("recycling this worker process: %s; it takes no more jobs, finishes "
                        "the %d it runs and exits for its supervisor to start a fresh one",
                        reason, self.busy())
            self._drain()
        return reason

    def info(self) -> dict[str, str]:
        """The heartbeat's fields of this process's pool."""
        found = {"slots_min": str(self.policy.min), "slots_max": str(self.policy.max),
                 "state": "draining" if self.draining is not None else "ready",
                 "jobs_done": str(self.jobs_done())}
        if self.probes is not None:
            found["health_port"] = str(self.probes.port)
        return found

    def start(self) -> ProcessPool:
        """The watch thread and the probe server (once, whatever the calls)."""
        if self._started:
            return self
        self._started = True
        if self.limits.health_port:
            try:
                self.probes = serve(self.live, self.ready, self.limits.health_host,
                                    self.limits.health_port)
            except NoFreePort as exc:  # the worker runs on, without probes
                log.error("health probes off: %s", exc)
        recycling = bool(self.limits.max_rss_mb or self.limits.max_jobs)
        if self.policy.fixed and not recycling:
            return self  # nothing to watch

        def watch() -> None:
            last_recycle = self._clock()
            while not self._stop.wait(TICK_S):
                try:
                    if not self.policy.fixed and self.draining is None:
                        self.elastic.tick()
                    if recycling and self._clock() - last_recycle >= RECYCLE_EVERY_S:
                        last_recycle = self._clock()
                        self.check_recycle()
                except Exception:  # the watch must go on
                    log.exception("worker pool watch failed")

        self._thread = threading.Thread(target=watch, name="farm-pool-watch", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.probes is not None:
            self.probes.close()
