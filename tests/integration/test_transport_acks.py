"""In a worker's event loop the farm's Redis channel writes acknowledgements in batches
(farm.broker.transport): an ack frees its prefetch slot at once, and the loop removes every
tag acked since its last turn from the unacked records in one round trip. Real Redis, and
kombu's own event loop (its Hub) registered as a worker registers it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Consumer
from kombu.asynchronous import Hub
from tests_kombu import KombuQueue, kombu_queue


@pytest.fixture
def looped(broker_url: str) -> Iterator[tuple[KombuQueue, Hub]]:
    """A queue whose connection's transport is registered with an event loop (as a
    worker's is)."""
    hub = Hub()
    with kombu_queue(broker_url) as made:
        made.conn.transport.register_with_event_loop(made.conn.connection, hub)
        try:
            yield made, hub
        finally:
            made.chan.close()  # while the loop is there (kombu_queue closes it again: no-op)
            hub.close()


def _deliver(made: KombuQueue, n: int) -> list[Any]:
    """``n`` messages published, then consumed (none acknowledged)."""
    made.publish(n)
    got: list[Any] = []
    made.chan.basic_qos(0, 50, False)
    Consumer(made.chan, [made.queue],
             callbacks=[lambda body, message: got.append(message)]).consume()
    while len(got) < n:
        made.conn.drain_events(timeout=5)
    return got


def _recorded(chan: Any, messages: list[Any]) -> list[bool]:
    """Whether each message is still recorded as unacknowledged in Redis (hash and index)."""
    with chan.conn_or_acquire() as client:
        return [bool(client.hexists(chan.unacked_key, m.delivery_tag))
                and client.zscore(chan.unacked_index_key, m.delivery_tag) is not None
                for m in messages]


def _tick(hub: Hub) -> None:
    """What the loop does on each turn before it waits: its on_tick callbacks."""
    for callback in list(hub.on_tick):
        callback()


def test_acks_free_the_prefetch_at_once_and_are_written_together_on_the_next_turn(
        looped: tuple[KombuQueue, Hub]) -> None:
    made, hub = looped
    conn, chan = made.conn, made.chan
    assert conn.transport.flushes_acks
    got = _deliver(made, 5)
    room = chan.qos.can_consume_max_estimate()
    for message in got[:3]:
        message.ack()
    assert chan.qos.can_consume_max_estimate() == room + 3  # the slots are free now
    assert _recorded(chan, got) == [True] * 5  # not yet written
    with chan.conn_or_acquire() as client:
        before = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
        _tick(hub)
        after = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    assert after - before == 1  # the three acks in one transaction
    assert _recorded(chan, got) == [False, False, False, True, True]
    assert chan.qos.flush_acks() == 0  # nothing left to write


def test_a_failed_write_keeps_the_acks_for_the_next_turn(
        looped: tuple[KombuQueue, Hub], monkeypatch: pytest.MonkeyPatch) -> None:
    made, hub = looped
    chan = made.chan
    got = _deliver(made, 2)
    for message in got:
        message.ack()

    def down(client: Any = None) -> Any:
        raise redis.ConnectionError("broker down")

    with monkeypatch.context() as patch:
        patch.setattr(chan, "conn_or_acquire", down)
        with pytest.raises(redis.ConnectionError):
            _tick(hub)
    assert _recorded(chan, got) == [True, True]
    assert chan.qos.flush_acks() == 2
    assert _recorded(chan, got) == [False, False]


def test_closing_the_channel_writes_the_acks_kept(
        looped: tuple[KombuQueue, Hub], broker_url: str) -> None:
    made, _ = looped
    chan, queue = made.chan, made.queue
    got = _deliver(made, 3)
    got[0].ack()
    got[1].ack()
    tags = [m.delivery_tag for m in got]
    unacked, index = chan.unacked_key, chan.unacked_index_key
    chan.close()  # the unacked third is restored to the list, the two acked are gone
    with redis.Redis.from_url(broker_url) as client:
        assert not any(client.hexists(unacked, tag) for tag in tags)
        assert not any(client.zscore(index, tag) for tag in tags)
        assert client.llen(queue.name) == 1


def test_without_an_event_loop_an_ack_is_written_at_once(broker_url: str) -> None:
    with kombu_queue(broker_url) as made:
        assert not made.conn.transport.flushes_acks
        got = _deliver(made, 2)
        got[0].ack()
        assert _recorded(made.chan, got) == [False, True]
