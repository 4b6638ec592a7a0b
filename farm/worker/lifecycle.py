"""Worker lifecycle on Celery signals: refuse to start without an API key, say loudly when
the provider is the simulator, start the leases at once, bound the shutdown, and give each
process its own resources. ``connect`` hooks them up for one worker (farm.worker.wiring)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import signals

from farm.observe import worker as observe
from farm.observe.worker import Observing
from farm.pool.process import ProcessPool
from farm.reliability import leases
from farm.settings import Settings
from farm.worker import runtime as rt

log = logging.getLogger("farm.worker")


def check_boot(settings: Settings) -> None:
    """A worker cannot run jobs without an API key: stop it before it takes any."""
    if settings.anthropic_api_key is None:
        raise SystemExit(
            "farm worker: ANTHROPIC_API_KEY is not set. A worker needs it to call the Claude "
            "API; for the local simulator (`farm sim`) set ANTHROPIC_API_KEY to any value and "
            "ANTHROPIC_BASE_URL=http://127.0.0.1:8787."
        )
    base = settings.anthropic_base_url
    if base and ("127.0.0.1" in base or "localhost" in base):
        log.warning("provider: the local SIMULATOR at %s, not the real Claude API", base)
    else:
        log.info("provider: %s", base or "https://api.anthropic.com")


def bound_the_grace(how: Any) -> None:
    """Warm shutdown (SIGTERM) waits for running jobs; this bounds the wait. After
    FARM_SHUTDOWN_GRACE_S the jobs still running are handed back (their leases end now, so
    any live worker's reaper re-queues them within its interval) and the process exits.
    Their unfinished calls are abandoned: they run again elsewhere, as a new attempt."""
    built = rt.current()
    if built is None or how != "Warm":
        return
    grace = built.settings.shutdown_grace_s

    def expire() -> None:
        if built.stop.wait(grace):
            return  # the worker stopped in time
        handed_back = leases.hand_back(built.db, built.running.snapshot())
        log.warning("shutdown grace of %.0fs is over: %d running job(s) handed back to the "
                    "queue; exiting", grace, handed_back)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=expire, name="farm-shutdown-grace", daemon=True).start()


def pool_of(consumer: Any) -> ProcessPool | None:
    """The worker's pool (farm.worker.pool_step), from its consumer (worker_ready's sender);
    None under prefork, whose jobs run in child processes (no metrics there)."""
    if consumer is None:
        return None
    kind = type(consumer.pool).__module__.rsplit(".", 1)[-1]
    if kind == "prefork":
        log.warning("metrics and the pool heartbeat are not kept under the prefork pool")
        return None
    found: ProcessPool | None = getattr(consumer, "farm_pool", None)
    return found


def threads_of(controller: Any) -> int | None:
    """The task threads of a starting worker (Celery's WorkController at worker_init): its
    `-c`; None under prefork, whose children run one job each and need no more than the
    defaults, or when Celery has not resolved it to a number."""
    threads = getattr(controller, "concurrency", None)
    pool = str(getattr(controller, "pool_cls", "")).lower()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        return None
    return None if "prefork" in pool or "processes" in pool else threads


def connect(settings: Settings, runtime: Callable[[], rt.Runtime], *,
            when_ready: Callable[[rt.Runtime], Any] | None = None) -> None:
    """Connect the handlers (strongly referenced, once per process whatever the calls);
    ``when_ready`` gets the runtime once the worker is ready (the batch loop starts there)."""
    # one line per HTTP request at INFO would drown the worker log
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def on_init(**_: Any) -> None:
        check_boot(settings)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        threads = threads_of(sender)
        if threads is not None:
            rt.size(threads)

    observing: list[Observing] = []

    def on_ready(sender: Any = None, **_: Any) -> None:
        # build this process's runtime now, so its lease renewal and reaper run from the
        # start (not only after the first job)
        built = runtime()
        if when_ready is not None:
            when_ready(built)
        pool = pool_of(sender)
        if pool is not None:
            observing.append(observe.start(settings, pool.queues, lambda: pool.slots,
                                           built.running.per_queue, info=pool.info))

    def on_shutting_down(how: Any = None, **_: Any) -> None:
        bound_the_grace(how)

    def on_shutdown(**_: Any) -> None:
        while observing:
            observing.pop().close()
        rt.reset()

    def on_process_init(**_: Any) -> None:
        rt.reset()  # a forked child must not share the parent's connections

    for signal, handler in ((signals.celeryd_init, on_init),
                            (signals.worker_init, on_worker_init), (signals.worker_ready, on_ready),
                            (signals.worker_shutting_down, on_shutting_down),
                            (signals.worker_shutdown, on_shutdown),
                            (signals.worker_process_init, on_process_init)):
        signal.connect(handler, weak=False, dispatch_uid=f"farm.lifecycle.{handler.__name__}")
