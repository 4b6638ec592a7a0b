"""Worker lifecycle on Celery signals: refuse to start without an API key, say loudly
when the provider is the simulator, and give each process its own resources."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import signals

from farm import leases

log = logging.getLogger("farm.worker")
# one line per HTTP request at INFO would drown the worker log
logging.getLogger("httpx2").setLevel(logging.WARNING)
logging.getLogger("httpx").setLevel(logging.WARNING)


def _settings(sender: Any) -> Any:
    app = getattr(sender, "app", None)
    return getattr(getattr(app, "conf", None), "farm_settings", None)


@signals.celeryd_init.connect
def _check_boot(sender: Any = None, instance: Any = None, **_: Any) -> None:
    settings = _settings(instance)
    if settings is None:
        return
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


@signals.worker_ready.connect
def _start_leases(sender: Any = None, **_: Any) -> None:
    """Build this process's runtime now, so its lease renewal and reaper run from the start
    (not only after the first job)."""
    app = getattr(sender, "app", None)
    if app is None or getattr(app.conf, "farm_settings", None) is None:
        return
    from farm.tasks import RUN_JOB, runtime_for

    runtime_for(app.tasks[RUN_JOB])


@signals.worker_shutting_down.connect
def _bound_the_grace(sig: Any = None, how: Any = None, exitcode: Any = None, **_: Any) -> None:
    """Warm shutdown (SIGTERM) waits for running jobs; this bounds the wait. After
    FARM_SHUTDOWN_GRACE_S the jobs still running are handed back (their leases end now, so
    any live worker's reaper re-queues them within its interval) and the process exits.
    Their unfinished calls are abandoned: they run again elsewhere, as a new attempt."""
    from farm import runtime

    built = runtime.current()
    if built is None or how != "Warm":
        return
    grace = built.settings.shutdown_grace_s

    def expire() -> None:
        if built.stop.wait(grace):
            return  # the worker stopped in time
        handed_back = leases.hand_back(built.engine, built.running.snapshot())
        log.warning("shutdown grace of %.0fs is over: %d running job(s) handed back to the "
                    "queue; exiting", grace, handed_back)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=expire, name="farm-shutdown-grace", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_leases(**_: Any) -> None:
    from farm import runtime

    runtime.reset()


@signals.worker_process_init.connect
def _fresh_resources(**_: Any) -> None:
    # a forked child must not share the parent's connections
    from farm import runtime

    runtime.reset()
