"""The event-batching step (farm.worker.event_step) on a stand-in consumer: it takes over
the dispatcher's publishing only when it can (a loop, events on, a flush interval), and
publishes what is buffered when it stops."""

from __future__ import annotations

from typing import Any

import pytest

from farm.worker.event_step import LIMIT, make_step


class _Dispatcher:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.buffer_limit, self.flushed = enabled, 24, 0
        self.on_send_buffered: Any = object()

    def flush(self) -> None:
        self.flushed += 1


class _Timer:
    def __init__(self) -> None:
        self.entries: list[tuple[float, Any, tuple[Any, ...]]] = []
        self.cancelled: list[Any] = []

    def call_repeatedly(self, secs: float, fun: Any, args: tuple[Any, ...] = ()) -> Any:
        self.entries.append((secs, fun, args))
        return len(self.entries)

    def cancel(self, entry: Any) -> None:
        self.cancelled.append(entry)


class _Consumer:
    def __init__(self, dispatcher: _Dispatcher | None, hub: object | None = object()) -> None:
        self.event_dispatcher, self.hub, self.timer = dispatcher, hub, _Timer()
        self.steps: list[Any] = []


def _step(flush_s: float, c: _Consumer) -> Any:
    return make_step(flush_s)(c)


def test_it_publishes_on_a_timer_and_when_it_stops() -> None:
    dispatcher = _Dispatcher()
    c = _Consumer(dispatcher)
    step = _step(0.1, c)
    step.start(c)
    assert dispatcher.buffer_limit == LIMIT and dispatcher.on_send_buffered is None
    [(secs, fun, args)] = c.timer.entries
    assert secs == 0.1
    fun(*args)  # a tick publishes the buffer
    assert dispatcher.flushed == 1
    step.stop(c)
    assert c.timer.cancelled == [1] and dispatcher.flushed == 2
    step.shutdown(c)  # stopped already: nothing more
    assert dispatcher.flushed == 2


@pytest.mark.parametrize(("flush_s", "dispatcher", "hub"), [
    (0.0, _Dispatcher(), object()),  # asked for Celery's own publishing
    (0.1, _Dispatcher(enabled=False), object()),  # events off
    (0.1, _Dispatcher(), None),  # no event loop (solo, prefork children)
])
def test_otherwise_celery_publishes_as_it_does(flush_s: float, dispatcher: _Dispatcher,
                                               hub: object | None) -> None:
    before = dispatcher.on_send_buffered
    c = _Consumer(dispatcher, hub)
    step = _step(flush_s, c)
    step.start(c)
    step.stop(c)
    assert dispatcher.buffer_limit == 24 and dispatcher.on_send_buffered is before
    assert c.timer.entries == [] and dispatcher.flushed == 0


def test_a_failed_publish_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(_Dispatcher):
        def flush(self) -> None:
            raise ConnectionError("broker gone")

    c = _Consumer(Failing())
    step = _step(0.1, c)
    step.start(c)
    step.stop(c)
    assert "task events not published: ConnectionError" in caplog.text
