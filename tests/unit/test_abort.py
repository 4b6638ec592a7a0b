"""Abandoning a call from another thread (farm.provider.abort), over real local sockets: a
server that takes the request and never answers, as a cut network looks to the caller."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import httpx2
import pytest

from farm.provider.abort import Calls, tracked_transport


class Silent:
    """A TCP server that reads what it is sent and never answers; it records what it got
    and how each connection ended."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.endings: list[str] = []
        self.got_request = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except ConnectionResetError:
                    self.endings.append("reset")
                    return
                if not data:
                    self.endings.append("closed")
                    return
                self.received.append(data)
                self.got_request.set()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.sock.close()


def call_in_thread(client: httpx2.Client, url: str) -> tuple[Future[object], int]:
    """GET url in a new thread; its future, and the thread's ident."""
    done: Future[object] = Future()
    ident: Future[int] = Future()

    def run() -> None:
        ident.set_result(threading.get_ident())
        try:
            done.set_result(client.get(url))
        except Exception as exc:
            done.set_result(exc)

    threading.Thread(target=run, daemon=True).start()
    return done, ident.result(timeout=5)


def test_a_stalled_call_is_stopped_and_its_connection_reset(silent: Silent) -> None:
    calls = Calls()
    with httpx2.Client(transport=tracked_transport(calls), timeout=60) as client:
        done, thread = call_in_thread(client, f"http://127.0.0.1:{silent.port}/v1/messages")
        assert silent.got_request.wait(5)  # the request is out; no answer will come
        assert not done.done()
        assert calls.abandon(thread) is True and calls.sent(thread)
        got = done.result(timeout=10)  # long before the 60 s timeout
    assert isinstance(got, httpx2.TransportError), got
    # the server sees the connection reset (SO_LINGER 0: anything unsent is dropped), not
    # a polite close
    for _ in range(100):
        if silent.endings:
            break
        threading.Event().wait(0.05)
    assert silent.endings == ["reset"]


def test_a_thread_marked_before_its_call_sends_nothing(silent: Silent) -> None:
    calls = Calls()
    with httpx2.Client(transport=tracked_transport(calls), timeout=60) as client:
        calls.abandon(threading.get_ident())  # not calling yet: nothing to shut down
        with pytest.raises(httpx2.TransportError, match="abandoned"):
            client.get(f"http://127.0.0.1:{silent.port}/v1/messages")
        assert silent.received == [] and not calls.sent(threading.get_ident())  # never left
        calls.clear(threading.get_ident())  # the next job on this thread calls normally
        done, thread = call_in_thread(client, f"http://127.0.0.1:{silent.port}/again")
        assert silent.got_request.wait(5)
        calls.abandon(thread)
        assert isinstance(done.result(timeout=10), httpx2.TransportError)


def test_abandoning_one_thread_leaves_the_others_calls_alone(silent: Silent) -> None:
    calls = Calls()
    with httpx2.Client(transport=tracked_transport(calls), timeout=60) as client:
        first, one = call_in_thread(client, f"http://127.0.0.1:{silent.port}/one")
        second, two = call_in_thread(client, f"http://127.0.0.1:{silent.port}/two")
        for _ in range(100):
            if len(silent.received) >= 2:
                break
            threading.Event().wait(0.05)
        calls.abandon(one)
        assert isinstance(first.result(timeout=10), httpx2.TransportError)
        assert not second.done()  # still waiting for its answer
        calls.abandon(two)
        assert isinstance(second.result(timeout=10), httpx2.TransportError)
