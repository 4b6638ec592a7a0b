"""The pool heartbeat in a real Redis, as the exporter and `farm top` read it: one hash per
worker process, ``queue -> "slots busy"`` and ``metrics_port``, expiring, deleted at a
clean stop."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterator

import httpx2
import pytest
import redis

from farm.observe import heartbeat
from farm.observe import worker as observe
from farm.settings import Settings
from tests_e2e import wait_until


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(broker_url, decode_responses=True)
    yield made
    made.close()


def test_a_beat_writes_the_agreed_hash_with_its_expiry(client: redis.Redis) -> None:
    busy = {"haiku-simple": 2}
    beat = heartbeat.Heartbeat(client, lambda: {"haiku-simple": (10, busy["haiku-simple"]),
                                                "farm-intake": (10, 0)}, 9464)
    assert beat.key == f"farm:pool:{socket.gethostname()}:{os.getpid()}"
    beat.beat()
    assert client.hgetall(beat.key) == {"haiku-simple": "10 2", "farm-intake": "10 0",
                                        "metrics_port": "9464"}
    assert 0 < client.ttl(beat.key) <= heartbeat.TTL_S
    busy["haiku-simple"] = 5
    beat.beat()
    assert client.hget(beat.key, "haiku-simple") == "10 5"
    beat.stop()
    assert not client.exists(beat.key)


def test_a_worker_process_beats_at_start_serves_its_port_and_clears_at_close(
        client: redis.Redis, broker_url: str, database_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    settings = Settings(broker_url=broker_url, database_url=database_url, metrics_port=base)
    running = {"haiku-simple": 1}
    observing = observe.start(settings, ("haiku-simple",), lambda: 4, lambda: running)
    key = observing.heartbeat.key
    try:
        assert observing.server is not None and observing.server.port == base
        wait_until(lambda: None if client.exists(key) else "no heartbeat", 10)
        assert client.hgetall(key) == {"haiku-simple": "4 1", "metrics_port": str(base)}
        body = httpx2.get(observing.server.url).text
        assert 'farm_pool_slots{queue="haiku-simple"} 4.0' in body
        assert 'farm_pool_busy{queue="haiku-simple"} 1.0' in body
    finally:
        observing.close()
    assert not client.exists(key)


def test_without_a_metrics_port_the_heartbeat_has_no_port_field(
        client: redis.Redis, broker_url: str, database_url: str) -> None:
    settings = Settings(broker_url=broker_url, database_url=database_url)
    observing = observe.start(settings, ("sonnet-complex",), lambda: 3, dict)
    try:
        assert observing.server is None and observing.metrics is None
        key = observing.heartbeat.key
        wait_until(lambda: None if client.exists(key) else "no heartbeat", 10)
        assert client.hgetall(key) == {"sonnet-complex": "3 0"}
    finally:
        observing.close()


def test_no_free_port_is_one_error_line_and_the_heartbeat_goes_on(
        client: redis.Redis, broker_url: str, database_url: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    base = taken.getsockname()[1]
    monkeypatch.setattr(observe, "serve", functools.partial(observe.serve, span=1))
    settings = Settings(broker_url=broker_url, database_url=database_url, metrics_port=base)
    try:
        observing = observe.start(settings, ("haiku-simple",), lambda: 2, dict)
    finally:
        taken.close()
    try:
        assert observing.server is None and observing.metrics is None
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == [f"metrics off: no free port for the metrics in [{base}, {base}] "
                          "on 127.0.0.1"]
        key = observing.heartbeat.key
        wait_until(lambda: None if client.exists(key) else "no heartbeat", 10)
        assert client.hgetall(key) == {"haiku-simple": "2 0"}
    finally:
        observing.close()
