"""The farm's Redis channel shares one client for its commands (farm.broker.transport):
kombu would build a ``redis.Redis`` per command. Real Redis: messages still go round, the
same client serves every command, and a new pool (a reconnection) gets a new client."""

from __future__ import annotations

import uuid

from kombu import Connection, Consumer, Exchange, Producer, Queue

from farm.broker import transport


def test_one_client_serves_publish_deliver_and_ack(broker_url: str) -> None:
    transport.register()
    name = f"transport-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    got: list[object] = []
    tags: list[str] = []
    with Connection(broker_url) as conn:
        channel = conn.channel()
        assert isinstance(channel, transport.Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key=name,
                                  declare=[queue])

        def on_message(body: object, message: object) -> None:
            got.append(body)
            tags.append(message.delivery_tag)  # type: ignore[attr-defined]
            message.ack()  # type: ignore[attr-defined]

        with Consumer(channel, [queue], callbacks=[on_message]):
            conn.drain_events(timeout=5)
        assert got == [{"n": 1}]
        with channel.conn_or_acquire() as client:
            # the delivery's unacked record is gone: the ack went through the shared client
            assert client is first
            assert client.llen(name) == 0
            assert not client.hexists(channel.unacked_key, tags[0])
        channel._disconnect_pools()  # what a reconnection does: a new pool
        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
            assert after.ping()
        with channel.conn_or_acquire(first) as given:
            assert given is first  # a client handed in is used as it is
        channel.close()
