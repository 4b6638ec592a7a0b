"""The worker's Redis client (farm.broker.connections) against a real Redis, and against a
server that never answers: the same answers and errors as redis-py's own, with the socket's
timeout kept by the kernel and no checkout poll on a connection just used."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from farm.broker.connections import (
    PROBE_S,
    KernelTimeoutConnection,
    RecentPool,
    worker_client,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def lean(broker_url: str) -> Iterator[redis.Redis]:
    made = worker_client(broker_url, max_connections=4)
    yield made
    made.close()


def one_connection(client: redis.Redis) -> KernelTimeoutConnection:
    pool = client.connection_pool
    conn = pool.get_connection()
    pool.release(conn)
    assert isinstance(conn, KernelTimeoutConnection)
    return conn


def test_commands_run_on_a_blocking_socket_with_the_kernels_timeout(
        lean: redis.Redis) -> None:
    assert isinstance(lean.connection_pool, RecentPool)
    lean.set("farm:test:lean", "1")
    assert lean.get("farm:test:lean") == b"1"
    assert lean.eval("return ARGV[1]", 0, "x") == b"x"
    sock = one_connection(lean)._sock
    assert sock is not None and sock.gettimeout() is None  # no poll before each send, recv
    seconds, micros = struct.unpack("ll", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("ll")))
    assert seconds + micros / 1e6 == pytest.approx(5.0)  # redis-py's default socket_timeout


def test_a_server_that_never_answers_times_out_as_with_redis_py() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed before anyone connected
            accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    client = worker_client(f"redis://127.0.0.1:{server.getsockname()[1]}/0",
                           socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match=r"Timeout reading from 127\.0\.0\.1"):
            client.ping()
        assert 0.25 < time.monotonic() - started < 3
    finally:
        client.close()
        server.close()
        for conn in accepted:
            conn.close()


def test_a_connection_just_used_is_not_polled_one_idle_longer_is(
        lean: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = one_connection(lean)
    polls: list[float] = []
    real = conn.can_read

    def counted(timeout: float = 0) -> bool:
        polls.append(timeout)
        return real(timeout)

    monkeypatch.setattr(conn, "can_read", counted)
    lean.ping()
    lean.ping()
    assert polls == []
    conn.farm_released_at = time.monotonic() - PROBE_S  # type: ignore[attr-defined]
    lean.ping()
    assert polls == [0]


def test_a_connection_the_server_closed_is_replaced_on_checkout_once_idle(
        lean: redis.Redis, client: redis.Redis) -> None:
    def kill() -> None:
        lean.client_setname("farm-lean-test")
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1

    kill()
    conn = one_connection(lean)
    conn.farm_released_at = time.monotonic() - PROBE_S  # type: ignore[attr-defined]
    assert lean.incr("farm:test:n") == 1  # idle: the checkout poll finds it closed
    kill()
    # just used: not polled, so its command fails as one in flight during a restart does
    # (the admission gate waits that out), and the next one reconnects
    with pytest.raises(redis.ConnectionError):
        lean.incr("farm:test:n")
    assert lean.incr("farm:test:n") == 2
