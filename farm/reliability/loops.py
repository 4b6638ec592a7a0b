"""The background loops of one worker process: lease renewal, the lease watchdog, the reaper
and the orphan sweep (daemon threads that stop with the process's stop event)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from farm.reliability.fencing import to_abandon
from farm.reliability.leases import Republish, Running, reap, renew
from farm.reliability.orphans import sweep_if_due
from farm.store.db import Database

log = logging.getLogger("farm.leases")


def start_threads(db: Database, running: Running, republish: Republish, *, lease_s: float,
                  reaper_interval_s: float, stop: threading.Event, broker: Any = None,
                  orphan_sweep_s: float = 30.0, orphan_age_s: float = 60.0,
                  consumed: Sequence[str] = (), abandon_share: float = 0.75,
                  ) -> list[threading.Thread]:
    """The renewal and reaper loops of one worker process (daemon threads); with a broker,
    the cluster's sweep too: orphans (queued jobs whose message Redis lost) and strays (the
    farm's messages on queues no farm worker consumes, ``consumed`` being those that are)."""

    def watch() -> None:
        """Stop the calls of jobs whose lease is lost or may run out before it is renewed
        (the renewal thread may itself hang on a cut network: this one never waits)."""
        held = running.held()
        for job_id in to_abandon(held, running.clock(), lease_s=lease_s,
                                 abandon_share=abandon_share, lost=running.lost()):
            if running.abandon(job_id):
                log.warning("job %s: its lease is lost or was not renewed for %.0fs (%.0f%% of "
                            "it): its call is abandoned, so that a re-run elsewhere does not "
                            "overlap it", job_id, running.clock() - held[job_id].held_at,
                            abandon_share * 100)

    def sweep() -> None:
        sweep_if_due(db, broker, republish, every_s=orphan_sweep_s, age_s=orphan_age_s,
                     grace_s=lease_s, consumed=consumed)

    def loop(name: str, interval: float, step: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            while not stop.wait(interval):
                try:
                    step()
                except Exception as exc:  # a DB outage: try again next round
                    log.warning("%s failed: %s", name, type(exc).__name__)

        thread = threading.Thread(target=run, name=f"farm-{name}", daemon=True)
        thread.start()
        return thread

    return [
        loop("lease-renewal", lease_s / 4, lambda: renew(db, running, lease_s)),
        loop("lease-watchdog", min(1.0, lease_s / 20), watch),
        loop("reaper", reaper_interval_s,
             lambda: reap(db, republish, grace_s=lease_s, broker=broker)),
        *([loop("sweep", min(reaper_interval_s, orphan_sweep_s), sweep)]
          if broker is not None else []),
    ]
