"""A provider connection's byte stream: tracked, so that a call can be abandoned
(farm.provider.abort), and sparing with system calls.

Every system call on a socket lets go of the interpreter lock, and in a busy worker a
thread that lets go of it waits its turn to get it back while the other threads run. On a
connection it reuses, httpcore's own stream makes about ten such calls per request: it sets
the socket's timeout before every read and write (an ``ioctl`` each), sends the request's
head and its body in two sends (a ``poll`` and a ``send`` each), and it checks every idle
connection of the pool for a server-side close (a ``poll`` each) each time a request starts
or ends. This stream, for the same request:

- sends the head and the body in one ``send``: what httpcore writes is kept until it first
  reads the response (it always reads after writing a request), and goes out then;
- sets the socket's timeout only when it changes (the SDK's read and write timeouts are
  the same);
- checks an idle connection for a server-side close at most once per ``PROBE_S``, and not
  within ``PROBE_S`` of its last read: a server that closes idle connections does so after
  seconds of silence (with ``Connection: close`` httpcore closes the connection itself).

Four system calls a request remain: a ``poll`` and a ``send``, a ``poll`` and a ``recv``.
HTTP/1.1 only, where one request at a time uses a connection and its answer is read once it
is written (``tracked_transport`` refuses HTTP/2). The abandonment contract is kept: a
thread marked to stop fails its next read or write before anything is sent, and a request
counts as sent (billable if abandoned) only once its bytes went out. A stream other than
httpcore's plain socket stream (TLS inside a TLS proxy) is read and written through its own
methods, with the same coalescing.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpcore2
from httpcore2 import NetworkStream
from httpcore2._backends.sync import SyncStream
from httpcore2._exceptions import map_exceptions

PROBE_S = 0.5  # an idle connection's server-side close is checked at most this often
READ_ERRORS: dict[type[Exception], type[Exception]] = {
    socket.timeout: httpcore2.ReadTimeout, OSError: httpcore2.ReadError}
WRITE_ERRORS: dict[type[Exception], type[Exception]] = {
    socket.timeout: httpcore2.WriteTimeout, OSError: httpcore2.WriteError}


class Tracker(Protocol):
    """Which thread uses which stream (farm.provider.abort.Calls): ``enter`` raises if the
    calling thread must stop."""

    def enter(self, stream: Stream, *, writing: bool = False) -> int: ...

    def leave(self, ident: int, stream: Stream) -> None: ...


class Stream(NetworkStream):
    def __init__(self, inner: NetworkStream, calls: Tracker,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._inner, self._calls, self._clock = inner, calls, clock
        # httpcore's plain stream is its socket and nothing else: its reads and writes are
        # made here directly, without the timeout set each time
        sock = inner.get_extra_info("socket") if type(inner) is SyncStream else None
        self._sock: socket.socket | None = sock if isinstance(sock, socket.socket) else None
        self._pending: list[bytes] = []  # written by httpcore, not sent yet
        self._write_timeout: float | None = None
        self._quiet_until = 0.0  # no server-side close check before then

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # a thread marked to stop fails here, before anything is sent
        self._calls.leave(self._calls.enter(self), self)
        if buffer:
            self._pending.append(bytes(buffer))
            self._write_timeout = timeout

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        ident = self._calls.enter(self, writing=bool(self._pending))
        try:
            if self._pending:
                self._send()
            if self._sock is None:
                return self._inner.read(max_bytes, timeout)
            with map_exceptions(READ_ERRORS):
                self._timeout(timeout)
                return self._sock.recv(max_bytes)
        finally:
            self._calls.leave(ident, self)
            self._quiet_until = self._clock() + PROBE_S

    def _send(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        if self._sock is None:
            self._inner.write(data, self._write_timeout)
            return
        with map_exceptions(WRITE_ERRORS):
            self._timeout(self._write_timeout)
            self._sock.sendall(data)

    def _timeout(self, timeout: float | None) -> None:
        assert self._sock is not None
        if self._sock.gettimeout() != timeout:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        self._pending.clear()
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> NetworkStream:
        return Stream(self._inner.start_tls(ssl_context, server_hostname, timeout),
                      self._calls, self._clock)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore asks it of every idle connection, often
            now = self._clock()
            if now < self._quiet_until:
                return False
            self._quiet_until = now + PROBE_S
        return self._inner.get_extra_info(info)

    def kill(self) -> None:
        """Reset the connection under the reader: a blocked recv returns at once."""
        sock = self._inner.get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # SHUT_RD wakes the blocked reader, sends nothing; its close then resets (linger
            # 0). The plain socket's shutdown, also under TLS: it must not touch the SSL state
            # that the reading thread is using
            socket.socket.shutdown(sock, socket.SHUT_RD)
        except OSError:
            pass  # already closed
