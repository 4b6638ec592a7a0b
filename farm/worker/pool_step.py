"""The worker pool on Celery: a consumer bootstep that gives the process its elastic slots
(farm.pool), its health probes and its recycling.

Slots are the consumer's prefetch. With ``task_acks_late`` and a prefetch multiplier of 1,
the messages a process holds unacknowledged are its running jobs plus those on their way
to a thread, so a prefetch of ``slots`` bounds both the jobs it runs and the work it keeps
from other workers. The thread pool has the policy's ``max`` threads (-c); fewer slots
leave threads idle. A change moves the prefetch by the difference (messages held for an
ETA raised it by one each, and keep doing so), and sets the prefetch a reconnect starts
from; shrinking takes no running job away: the consumer takes no new message until the
jobs under way have ended below the new number.

The prefetch starts at ``min`` before the consumer takes anything (this step's ``__init__``
runs when the consumer's blueprint is applied, before any step starts)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state

from farm.pool.process import Limits, ProcessPool
from farm.pool.slots import Change
from farm.services import resolve_urls
from farm.settings import Settings
from farm.worker import runtime as rt

log = logging.getLogger("farm.pool")

PROBE_TIMEOUT_S = 2.0


def consumed(c: Any) -> tuple[str, ...]:
    queues = c.app.amqp.queues
    return tuple(sorted(queues.consume_from or queues))


def _broker_probe(settings: Settings) -> Callable[[], None]:
    client = redis.Redis.from_url(resolve_urls(settings).broker_url,
                                  socket_timeout=PROBE_TIMEOUT_S,
                                  socket_connect_timeout=PROBE_TIMEOUT_S)

    def probe() -> None:
        client.ping()

    return probe


def _database_probe() -> None:
    built = rt.current()
    if built is None:
        raise RuntimeError("the worker's runtime is not built yet")
    with built.db.connect() as conn:
        conn.execute("select 1")


def _drain() -> None:
    # Celery's warm shutdown: stop consuming, let the running jobs end (within
    # FARM_SHUTDOWN_GRACE_S, farm.worker.lifecycle), exit 0
    os.kill(os.getpid(), signal.SIGTERM)


def make_step(settings: Settings,
              on_change: Callable[[Change], None] | None = None) -> type[bootsteps.StartStopStep]:
    class FarmPool(bootsteps.StartStopStep):  # type: ignore[misc]
        """The farm's worker pool (farm.pool): elastic slots, probes, recycling."""

        name = "farm.pool"
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            queues = consumed(c)
            try:
                policy = settings.slot_policy(queues, c.pool.limit)
            except ValueError as exc:
                raise SystemExit(f"farm worker: {exc}") from None
            multiplier = max(1, c.prefetch_multiplier)
            c.initial_prefetch_count = policy.min * multiplier

            def apply(before: int, after: int) -> None:
                # a reconnect starts the prefetch from here; the live one moves by the step
                c.initial_prefetch_count = after * multiplier
                if c.qos is not None:
                    c._update_qos_eventually(after - before)

            self.pool = ProcessPool(
                queues, policy,
                Limits(max_rss_mb=settings.worker_max_rss_mb,
                       max_jobs=settings.worker_max_jobs, health_host=settings.health_host,
                       health_port=settings.health_port),
                apply=apply, busy=lambda: len(state.active_requests),
                jobs_done=lambda: sum(state.total_count.values()), drain=_drain,
                broker=_broker_probe(settings), database=_database_probe,
                on_change=on_change)
            c.farm_pool = self.pool
            self._tick: Any = None
            log.info("slots %d (bounds %d-%d%s) on %s", policy.min, policy.min, policy.max,
                     ", fixed" if policy.fixed else ", elastic", ", ".join(queues))

        def start(self, c: Any) -> None:
            self._tick = c.timer.call_repeatedly(1.0, self.pool.loop_ticked)
            self.pool.loop_ticked()
            self.pool.consuming = True
            self.pool.start()

        def stop(self, c: Any) -> None:
            self.pool.consuming = False
            if self._tick is not None:
                c.timer.cancel(self._tick)
                self._tick = None

        def shutdown(self, c: Any) -> None:
            self.stop(c)
            self.pool.close()

    return FarmPool
