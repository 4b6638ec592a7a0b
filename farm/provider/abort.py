"""Abandoning a provider call from another thread.

A call in flight blocks its worker thread in a socket read, and a stalled network (a
partition) can hold it there until the request timeout. The lease watchdog
(``farm.reliability.watchdog``) must be able to stop it sooner. So the farm's HTTP
connections go through ``TrackingBackend``: every read and write of their stream
(farm.provider.stream) registers the connection with the calling thread, and
``Calls.abandon(thread)`` shuts that connection down. The blocked read returns at once,
the SDK raises a connection error, and the task records the call as ``abandoned``. The
connection is reset (SO_LINGER 0), so a request still in the send buffer is discarded
rather than delivered after the network heals. A thread marked for abandonment fails its
next read or write at once, so a call that had not reached the network yet never does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import httpcore2
from httpcore2 import NetworkBackend, NetworkStream

from farm.provider.stream import Stream


class Calls:
    """Which connection each thread is reading or writing, and the threads to stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, Stream] = {}
        self._doomed: set[int] = set()
        self._sent: set[int] = set()  # threads that wrote a request since their last clear

    def abandon(self, thread: int) -> bool:
        """Stop the call of ``thread``: its connection now, or its next read or write.
        Returns whether a connection was in use (and was shut down)."""
        with self._lock:
            self._doomed.add(thread)
            stream = self._active.get(thread)
        if stream is None:
            return False
        stream.kill()
        return True

    def clear(self, thread: int) -> None:
        """The thread's job is over: its next call runs normally."""
        with self._lock:
            self._doomed.discard(thread)
            self._sent.discard(thread)

    def sent(self, thread: int) -> bool:
        """Whether the thread's call wrote anything (since its last clear): an abandoned call
        that did not may have cost nothing; one that did may be billed."""
        with self._lock:
            return thread in self._sent

    def enter(self, stream: Stream, *, writing: bool = False) -> int:
        """The calling thread starts a read or write on ``stream`` (raises if it must stop);
        returns the thread's ident for ``leave``. A pair of calls, not a context manager:
        it runs on every socket read and write of every provider call."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self._doomed:
                raise httpcore2.ReadError("call abandoned: the job's lease could not be renewed")
            self._active[ident] = stream
            if writing:
                self._sent.add(ident)
        return ident

    def leave(self, ident: int, stream: Stream) -> None:
        with self._lock:
            if self._active.get(ident) is stream:
                del self._active[ident]


class TrackingBackend(NetworkBackend):
    """httpcore's network backend, with every stream tracked by ``calls``."""

    def __init__(self, calls: Calls, inner: NetworkBackend | None = None) -> None:
        self._calls = calls
        self._inner = inner if inner is not None else httpcore2.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return Stream(stream, self._calls)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return Stream(stream, self._calls)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def tracked_transport(calls: Calls, **options: Any) -> Any:
    """An httpx transport (``httpx2.HTTPTransport(**options)``) whose connections are
    tracked by ``calls``. httpx takes no network backend, so its pool's is swapped; the
    check below fails loudly should a new httpx version move it."""
    import httpx2

    if options.get("http2"):  # its streams keep a request until its answer is read
        raise ValueError("the tracked transport speaks HTTP/1.1 only (farm.provider.stream)")
    transport = httpx2.HTTPTransport(**options)
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore2.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx2.HTTPTransport has no httpcore2 pool to track: "
                           "calls could not be abandoned")
    pool._network_backend = TrackingBackend(calls, pool._network_backend)
    return transport
