"""The background loops of one worker process: lease renewal, the reaper and the orphan
sweep (daemon threads that stop with the process's stop event)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from farm.reliability.leases import Republish, Running, reap, renew
from farm.reliability.orphans import sweep_if_due

log = logging.getLogger("farm.leases")


def start_threads(engine: Engine, running: Running, republish: Republish, *, lease_s: float,
                  reaper_interval_s: float, stop: threading.Event, broker: Any = None,
                  orphan_sweep_s: float = 30.0, orphan_age_s: float = 60.0,
                  consumed: Sequence[str] = (),
                  ) -> list[threading.Thread]:
    """The renewal and reaper loops of one worker process (daemon threads); with a broker,
    the cluster's sweep too: orphans (queued jobs whose message Redis lost) and strays (the
    farm's messages on queues no farm worker consumes, ``consumed`` being those that are)."""

    def sweep() -> None:
        sweep_if_due(engine, broker, republish, every_s=orphan_sweep_s, age_s=orphan_age_s,
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
        loop("lease-renewal", lease_s / 4, lambda: renew(engine, running.snapshot(), lease_s)),
        loop("reaper", reaper_interval_s,
             lambda: reap(engine, republish, grace_s=lease_s, broker=broker)),
        *([loop("sweep", min(reaper_interval_s, orphan_sweep_s), sweep)]
          if broker is not None else []),
    ]
