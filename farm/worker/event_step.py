"""Task events published a batch at a time: at most every FARM_EVENTS_FLUSH_S per worker.

Celery buffers a worker's task events (received, started, succeeded, …) and publishes the
buffer as one ``task.multi`` message on the next turn of its event loop, so a busy worker
publishes once per one to three events: measured at 300 jobs/s, 1.36 messages a job and a
sixth of the worker's CPU in publishing them (kombu's producer path for each message). This
step publishes the buffer on a timer instead, every ``flush_s``: a few dozen events a
message. Flower sees an event up to ``flush_s`` later. The buffer is published too when it
holds ``LIMIT`` events (Celery's own rule, at a higher mark) and when the consumer stops (a
shutdown, or a lost connection: then what cannot be published is lost, as it is with
Celery's own publishing). ``flush_s`` 0 leaves Celery's own publishing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

log = logging.getLogger("farm.worker")

LIMIT = 500  # events in the buffer that publish it at once, from the thread that sends


def make_step(flush_s: float) -> type[bootsteps.StartStopStep]:
    class EventBatching(bootsteps.StartStopStep):  # type: ignore[misc]
        """Publish the task events every ``flush_s``, not on every turn of the loop."""

        name = "farm.events"
        requires = ("celery.worker.consumer.events:Events",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            self._tick: Any = None

        def start(self, c: Any) -> None:
            dispatcher = c.event_dispatcher
            # no loop (a pool without one), events off, or no batching asked: Celery's way
            if flush_s <= 0 or dispatcher is None or not dispatcher.enabled or not c.hub:
                return
            dispatcher.buffer_limit = LIMIT
            dispatcher.on_send_buffered = None  # no publish per turn of the loop
            self._tick = c.timer.call_repeatedly(flush_s, _flush, (c,))

        def stop(self, c: Any) -> None:
            if self._tick is not None:
                c.timer.cancel(self._tick)
                self._tick = None
                _flush(c)  # before the dispatcher closes (Events stops after this step)

        def shutdown(self, c: Any) -> None:
            self.stop(c)

    return EventBatching


def _flush(c: Any) -> None:
    dispatcher = c.event_dispatcher
    if dispatcher is None:
        return
    try:
        dispatcher.flush()
    except Exception as exc:  # the broker gone: Celery keeps what it could not publish
        log.warning("task events not published: %s", type(exc).__name__)
