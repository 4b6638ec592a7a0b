"""A provider connection's stream (farm.provider.stream) over real local sockets: what it
sends when, the system calls it spares, and the server-side close it still notices."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore2
import httpx2
import pytest
from httpcore2._backends.sync import SyncStream

from farm.provider.abort import Calls, tracked_transport
from farm.provider.stream import PROBE_S, Stream


class CountingSocket(socket.socket):
    """A socket that counts the calls the stream makes on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: dict[str, int] = {"sendall": 0, "send": 0, "recv": 0, "settimeout": 0}

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        self.counts["sendall"] += 1
        super().sendall(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        self.counts["send"] += 1
        return super().send(*args, **kwargs)

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self.counts["recv"] += 1
        return super().recv(*args, **kwargs)

    def settimeout(self, value: float | None) -> None:
        self.counts["settimeout"] += 1
        super().settimeout(value)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    a, b = socket.socketpair()
    mine = CountingSocket(fileno=a.detach())
    yield mine, b
    mine.close()
    b.close()


def stream(sock: socket.socket, calls: Calls | None = None,
           clock: Clock | None = None) -> Stream:
    return Stream(SyncStream(sock), calls or Calls(), clock or Clock())


def peer_has(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        peer.setblocking(True)


def test_a_request_goes_out_in_one_send_when_its_answer_is_read(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    s, calls = stream(mine), Calls()
    s._calls = calls
    me = threading.get_ident()
    s.write(b"POST / HTTP/1.1\r\n\r\n", timeout=5)
    s.write(b'{"a": 1}', timeout=5)
    assert peer_has(peer) == b"" and not calls.sent(me)  # nothing out yet
    peer.sendall(b"HTTP/1.1 200 OK\r\n")
    assert s.read(1024, timeout=5) == b"HTTP/1.1 200 OK\r\n"
    assert peer.recv(65536) == b'POST / HTTP/1.1\r\n\r\n{"a": 1}' and calls.sent(me)
    assert mine.counts["sendall"] == 1 and mine.counts["send"] == 0
    peer.sendall(b"more")
    assert s.read(1024, timeout=5) == b"more"
    assert mine.counts["sendall"] == 1  # nothing left to send


def test_the_timeout_is_set_only_when_it_changes(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    s = stream(mine)
    for _ in range(3):
        s.write(b"ping", timeout=5)
        peer.sendall(b"pong")
        assert s.read(4, timeout=5) == b"pong"
        assert peer.recv(4) == b"ping"
    assert mine.counts["settimeout"] == 1 and mine.gettimeout() == 5
    peer.sendall(b"x")
    assert s.read(1, timeout=7) == b"x"
    assert mine.counts["settimeout"] == 2 and mine.gettimeout() == 7


def test_a_read_that_times_out_and_a_broken_send_raise_httpcores_errors(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    s = stream(mine)
    with pytest.raises(httpcore2.ReadTimeout):
        s.read(10, timeout=0.05)
    peer.close()
    s.write(b"x" * 1_000_000, timeout=1)  # more than the socket buffers hold, peer gone
    with pytest.raises(httpcore2.WriteError):
        s.read(10, timeout=1)


def test_a_thread_to_stop_fails_its_write_and_nothing_is_sent(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    calls = Calls()
    s = stream(mine, calls)
    calls.abandon(threading.get_ident())
    with pytest.raises(httpcore2.ReadError, match="abandoned"):
        s.write(b"request", timeout=5)
    with pytest.raises(httpcore2.ReadError, match="abandoned"):
        s.read(10, timeout=5)
    assert peer_has(peer) == b"" and mine.counts["sendall"] == 0
    assert not calls.sent(threading.get_ident())


def test_a_server_side_close_is_checked_at_most_once_per_probe_interval(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    clock = Clock()
    s = stream(mine, clock=clock)
    assert s.get_extra_info("is_readable") is False  # probed: open
    peer.close()  # the server closes the idle connection
    assert s.get_extra_info("is_readable") is False  # within PROBE_S: not probed again
    clock.now += PROBE_S
    assert s.get_extra_info("is_readable") is True  # probed: closed


def test_a_connection_just_read_is_not_probed(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    clock = Clock()
    s = stream(mine, clock=clock)
    peer.sendall(b"answer")
    s.read(6, timeout=5)
    peer.sendall(b"stray")  # readable now, but the read was just made
    assert s.get_extra_info("is_readable") is False
    clock.now += PROBE_S
    assert s.get_extra_info("is_readable") is True


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Echo.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_requests_through_the_sdks_http_client_keep_their_bodies_and_connection() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/messages"
    try:
        with httpx2.Client(transport=tracked_transport(Calls()), timeout=10) as client:
            got = [client.post(url, content=f"body {i}".encode() * 100) for i in range(5)]
            ports = {r.extensions["network_stream"].get_extra_info("client_addr")[1]
                     for r in got}
    finally:
        server.shutdown()
        server.server_close()
    assert [r.content for r in got] == [f"body {i}".encode() * 100 for i in range(5)]
    assert Echo.bodies[-5:] == [r.content for r in got]
    assert len(ports) == 1  # one connection, kept alive and reused


def test_the_tracked_transport_refuses_http2() -> None:
    with pytest.raises(ValueError, match=r"HTTP/1\.1 only"):
        tracked_transport(Calls(), http2=True)
