"""The controller of a worker process's elastic slots: each ``tick`` (every second, from
farm.pool.process) samples how many slots are busy, asks the pure policy
(farm.pool.slots.decide) and applies a change through ``apply`` (farm.worker.pool_step: the
consumer's prefetch, so fewer slots also means fewer messages taken). Clock and the busy
count are injected.

Each change is logged (``farm.pool``) and reported to ``on_change`` (metrics)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from farm.pool.slots import Change, Sample, SlotPolicy, decide

log = logging.getLogger("farm.pool")

Apply = Callable[[int, int], None]  # (before, after)


class Elastic:
    def __init__(self, policy: SlotPolicy, apply: Apply, busy: Callable[[], int], *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[Change], None] | None = None) -> None:
        self.policy, self._apply, self._busy = policy, apply, busy
        self._clock, self._on_change = clock, on_change
        self.slots = policy.min
        self.changed_at = clock()
        self.changes = 0
        self._samples: deque[Sample] = deque()
        self._lock = threading.Lock()

    @property
    def utilisation(self) -> float:
        """Busy ÷ slots now (the heartbeat's and `farm workers`' figure)."""
        return min(1.0, self._busy() / self.slots) if self.slots else 0.0

    def tick(self) -> Change | None:
        """Sample, decide, and apply the change due now, if any."""
        with self._lock:
            now = self._clock()
            self._samples.append(Sample(now, self._busy(), self.slots))
            horizon = now - self.policy.window_s
            while self._samples and self._samples[0].at <= horizon:
                self._samples.popleft()
            change = decide(self.policy, self.slots, self._samples, self.changed_at, now)
            if change is None:
                return None
            self._apply(change.before, change.after)
            self.slots, self.changed_at = change.after, now
            self.changes += 1
        log.info("%s", change.describe(self.policy))
        if self._on_change is not None:
            self._on_change(change)
        return change
