"""The farm's Redis channel takes up to ``BATCH`` more messages after each BRPOP, as far as
the prefetch allows, popping and recording them as unacknowledged in one script
(farm.broker.transport.TAKE). Real Redis: the order is kept, the prefetch is kept, each
record is the one kombu's QoS.append writes (kombu restores it), and an item that is not a
message is dropped, not recorded."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Queue
from tests_kombu import KombuQueue, kombu_queue

from farm.broker import transport


@pytest.fixture
def channel(broker_url: str) -> Iterator[KombuQueue]:
    with kombu_queue(broker_url) as made:
        yield made


def _one_wakeup(conn: Connection, chan: Any, queue: Queue, prefetch: int) -> list[Any]:
    """The messages one drain of the consumer delivers (none acknowledged)."""
    got: list[Any] = []
    chan.basic_qos(0, prefetch, False)
    consumer = Consumer(chan, [queue], callbacks=[lambda body, message: got.append(message)])
    consumer.consume()
    conn.drain_events(timeout=5)
    return got


def test_one_wakeup_takes_the_brpop_message_and_a_batch_in_order(
        channel: KombuQueue) -> None:
    conn, chan, queue = channel
    channel.publish(10)
    got = _one_wakeup(conn, chan, queue, prefetch=50)
    assert [m.payload for m in got] == [{"n": i} for i in range(1 + transport.BATCH)]
    with chan.conn_or_acquire() as client:
        assert client.llen(queue.name) == 10 - 1 - transport.BATCH
        for message in got:
            # what kombu's QoS.append writes: [the message, exchange, routing key], indexed
            raw, exchange, routing_key = json.loads(client.hget(chan.unacked_key,
                                                                message.delivery_tag))
            assert raw == message._raw
            assert (exchange, routing_key) == (queue.exchange.name, queue.routing_key)
            assert client.zscore(chan.unacked_index_key, message.delivery_tag) is not None
        assert not chan.qos.recorded  # each taken tag was appended once, without a write
        for message in got:
            message.ack()
        assert not any(client.hexists(chan.unacked_key, m.delivery_tag) for m in got)
        assert not any(client.zscore(chan.unacked_index_key, m.delivery_tag) for m in got)


def test_the_prefetch_bounds_the_batch(channel: KombuQueue) -> None:
    conn, chan, queue = channel
    channel.publish(10)
    got = _one_wakeup(conn, chan, queue, prefetch=2)
    assert [m.payload for m in got] == [{"n": 0}, {"n": 1}]
    with chan.conn_or_acquire() as client:
        assert client.llen(queue.name) == 8


def test_taken_messages_not_acknowledged_are_restored_as_sent(
        channel: KombuQueue) -> None:
    conn, chan, queue = channel
    channel.publish(3)
    got = _one_wakeup(conn, chan, queue, prefetch=50)
    assert len(got) == 3
    chan.qos.restore_unacked()  # what a worker's shutdown or the visibility timeout does
    with chan.conn_or_acquire() as client:
        back = [json.loads(item) for item in client.lrange(queue.name, 0, -1)]
        assert not any(client.hexists(chan.unacked_key, m.delivery_tag) for m in got)
    assert sorted(b["properties"]["delivery_tag"] for b in back) == sorted(
        m.delivery_tag for m in got)
    assert sorted(b["body"] for b in back) == sorted(m._raw["body"] for m in got)


def test_an_item_that_is_no_message_is_dropped_unrecorded(
        channel: KombuQueue, caplog: pytest.LogCaptureFixture) -> None:
    conn, chan, queue = channel
    channel.publish(1)
    with chan.conn_or_acquire() as client:
        # behind the first message: not JSON, JSON without a tag, then a message
        client.lpush(queue.name, b"\xffnot json", json.dumps({"body": "x"}))
    channel.publish(1)
    with caplog.at_level(logging.ERROR, logger="farm.broker"):
        got = _one_wakeup(conn, chan, queue, prefetch=50)
    assert [m.payload for m in got] == [{"n": 0}, {"n": 0}]
    dropped = [r.getMessage() for r in caplog.records]
    assert len(dropped) == 2 and all("not a message" in line for line in dropped)
    assert not any("xff" in line for line in dropped)  # the reason and size, not the item
    with chan.conn_or_acquire() as client:
        assert client.hlen(chan.unacked_key) >= 2
        assert {m.delivery_tag for m in got} <= {
            t.decode() for t in client.hkeys(chan.unacked_key)}
        assert client.llen(queue.name) == 0
    for message in got:
        message.ack()


def test_a_broker_without_rpop_count_falls_back_to_one_at_a_time(
        channel: KombuQueue, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    conn, chan, queue = channel
    # the error an old Redis gives to RPOP with a count, from inside the script
    monkeypatch.setattr(transport, "TAKE", "return redis.call('RPOP', KEYS[1], 1, 2)")
    channel.publish(3)
    with caplog.at_level(logging.WARNING, logger="farm.broker"):
        got = _one_wakeup(conn, chan, queue, prefetch=50)
    assert [m.payload for m in got] == [{"n": 0}]
    assert chan.take_batch == 0
    assert any("one message per BRPOP" in r.getMessage() for r in caplog.records)
    conn.drain_events(timeout=5)
    with chan.conn_or_acquire() as client:
        assert client.llen(queue.name) == 1  # one more, by BRPOP alone
