"""The worker's Redis client for the farm's own commands (admission and its settle, leases,
the hold flag, the orphan sweep): redis-py's, with three system calls a command fewer.

Every system call lets go of the interpreter lock, and in a busy worker the thread then
waits its turn to get it back (farm.provider.stream says more). redis-py makes five per
command on a pooled connection: on checkout a ``poll`` for unread data or a server-side
close, and, since its sockets have a timeout (5 s by default), a ``poll`` before the
``send`` and another before the ``recv``: CPython implements a socket timeout by polling
first. Here:

- the socket is blocking and the kernel keeps its timeout (``SO_SNDTIMEO``/``SO_RCVTIMEO``,
  the same seconds): a command whose server stalls still fails after ``socket_timeout``,
  with redis-py's TimeoutError;
- a connection used within ``PROBE_S`` is handed out without the checkout ``poll``; one
  idle for longer is checked as before. One that the server closed within that time (a
  restart quicker than ``PROBE_S``, a ``CLIENT KILL``) fails its next command with
  ConnectionError, as a command in flight during a restart does: the admission gate waits
  that out (farm.capacity.admission), a settle not made frees its grant after its TTL, and
  redis-py connects again for the command after it.

Two system calls a command remain, a ``send`` and a ``recv``. TLS (``rediss://``) and Unix
socket connections keep redis-py's own sockets: the kernel timeout is set for plain TCP.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.exceptions import ConnectionError, TimeoutError

PROBE_S = 0.5  # a connection idle for longer is checked on checkout


def _timed_out(exc: BaseException) -> bool:
    """Whether a redis-py ConnectionError is the kernel's timeout (EAGAIN on a blocking
    socket with SO_RCVTIMEO / SO_SNDTIMEO)."""
    return isinstance(exc.__cause__ or exc.__context__, BlockingIOError)


class KernelTimeoutConnection(redis.Connection):
    """A TCP connection whose socket is blocking, with its timeout kept by the kernel."""

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()
        timeout = self.socket_timeout
        if timeout:
            seconds = int(timeout)
            value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            sock.settimeout(None)
        return sock

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            super().send_packed_command(command, check_health)
        except ConnectionError as exc:
            if _timed_out(exc):
                raise TimeoutError("Timeout writing to socket") from None
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ConnectionError as exc:
            if _timed_out(exc):  # redis-py has disconnected it (unless told not to)
                raise TimeoutError(f"Timeout reading from {self._host_error()}") from None
            raise


class RecentPool(redis.ConnectionPool):
    """redis-py's pool; a connection released within ``PROBE_S`` is not polled again on
    checkout."""

    def release(self, connection: Any) -> None:
        connection.farm_released_at = time.monotonic()
        super().release(connection)

    def ensure_connection(self, connection: Any) -> None:
        released = getattr(connection, "farm_released_at", None)
        if released is not None and time.monotonic() - released < PROBE_S:
            connection.connect()  # connects it if it is not (a no-op otherwise)
            return
        super().ensure_connection(connection)


def worker_client(url: str, **options: Any) -> redis.Redis:
    """A client of ``url`` (redis-py's ``from_url`` options) on a ``RecentPool``, with
    ``KernelTimeoutConnection``s for a ``redis://`` TCP URL."""
    if urlsplit(url).scheme == "redis":
        options = {"connection_class": KernelTimeoutConnection, **options}
    return redis.Redis(connection_pool=RecentPool.from_url(url, **options))
