"""The Redis transport, hardened: an item on a queue that is not a message is dropped with a
logged reason instead of stopping the worker.

kombu's Redis channel decodes each popped item inline in its consumer loop; an item that is
not JSON (anyone can LPUSH to a Redis list) raises there and the worker dies with
"Unrecoverable error". Celery handles bad bodies, unknown tasks and refused content types
itself once an item is a well-formed envelope; this channel makes sure it is one.

It also takes more than one message per wake-up. kombu's consumer pops one message per
BRPOP and records it as unacknowledged in a second round trip; under a backlog its one
thread, sharing the interpreter lock with the task threads, then hands out fewer jobs than
the slots could run (9 of 100 running while 1,000 waited, in the cpu-bound bench). After
each BRPOP this channel pops up to ``BATCH`` more from the same list, as far as the prefetch
allows, with ``TAKE``: one script that pops them and records each as unacknowledged, so an
extra message is never out of both the list and the unacked hash (kombu's own pop has that
window for its one message; the farm's orphan sweep covers it).

It is selected by the broker URL's scheme: ``register`` (called by farm.app.create_app) makes
kombu resolve ``redis://`` and ``rediss://`` to it. Named by a ``broker_transport`` path
instead, it would make the connection's URL ``farm.broker.transport:Transport://…``, which
no monitor can read: Flower answers "'redis' broker is not supported" on its Broker page and
to /api/queues/length.

Inside a worker's event loop it writes acknowledgements in batches. kombu removes each acked
message from the unacked records with a round trip of its own, on the consumer's thread:
at 200 jobs a second, 200 round trips a second on the thread that also hands out the jobs.
Here an ack is settled in the process at once (its prefetch slot is free) and its tag kept;
the loop writes every tag kept since its last turn in one round trip (``flush_acks``, on
each turn of the loop, before it waits), and a channel that closes writes what is left. A
tag whose write is lost (the process dies in between, Redis fails) leaves its message
recorded as unacknowledged, as a lost ack of kombu's own does: it is restored after the
visibility timeout, and the farm acknowledges that repeated delivery of a finished job
unrun. Outside an event loop (a consumer draining events itself) an ack is written at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import time
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger("farm.broker")


def decode_envelope(item: bytes | str) -> dict[str, Any]:
    """The kombu envelope in a popped Redis item; ValueError when it is not one."""
    payload = loads(bytes_to_str(item))
    if not isinstance(payload, dict) or not {"body", "properties"} <= payload.keys():
        raise ValueError("not a message envelope (needs 'body' and 'properties')")
    if not isinstance(payload["properties"], dict):
        raise ValueError("the envelope's 'properties' is not an object")
    return payload


def _size(item: bytes | str) -> int:
    return len(item.encode("utf-8", "replace") if isinstance(item, str) else item)


def _reason(exc: ValueError) -> str:
    """Why the item is not a message, without its content: a JSON error says where it
    stopped; anything else but the envelope checks' own messages, only its kind."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at character {exc.pos}"
    return str(exc) if type(exc) is ValueError else type(exc).__name__


def _envelope(item: bytes | str, queue: str) -> dict[str, Any] | None:
    """The item's envelope, or None: an item that is not a message is dropped, and the log
    says why and how big, never what it holds (anyone may push anything to a list)."""
    try:
        return decode_envelope(item)
    except ValueError as exc:
        log.error("dropped an item on queue %s that is not a message: %s (%d bytes, "
                  "not shown)", queue, _reason(exc), _size(item))
        return None


# KEYS: the list, the unacked hash, the unacked index. ARGV: how many at most, now. Pops up
# to that many items and records each message as kombu's QoS.append does (its tag's score,
# and [message, exchange, routing key] under its tag), the item's text kept as it is.
# Returns each item followed by 1 if it was recorded, 0 if it is no message (the channel
# drops it with a log line). RPOP with a count needs Redis 6.2.
TAKE = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
local out = {}
if not items then return out end
for _, item in ipairs(items) do
  out[#out + 1] = item
  out[#out + 1] = 0
  local ok, msg = pcall(cjson.decode, item)
  local props = ok and type(msg) == 'table' and msg['properties']
  local tag = type(props) == 'table' and props['delivery_tag']
  local info = type(props) == 'table' and props['delivery_info']
  if type(tag) == 'string' and type(info) == 'table' and msg['body'] ~= nil then
    redis.call('ZADD', KEYS[3], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
      .. ',' .. cjson.encode(info['routing_key']) .. ']')
    out[#out] = 1
  end
end
return out
"""
# 8 more at most: with it the cpu-bound bench ran 95-97 of its 100 slots at once (kombu's one
# message per BRPOP: 9-10 while 1,000 jobs waited); the prefetch bounds it in any case
BATCH = 8


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, but a message ``TAKE`` recorded already is not recorded again, and
    in an event loop acks are written in batches (``flush_acks``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[str] = set()
        self._acked: list[str] = []  # acked here, not yet removed from the records in Redis
        self._acked_lock = threading.Lock()

    def ack(self, delivery_tag: str) -> None:
        if not self.channel.connection.flushes_acks:
            super().ack(delivery_tag)
            return
        with self._acked_lock:
            self._acked.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def flush_acks(self) -> int:
        """Remove every tag acked since the last flush from the unacked records, in one
        round trip; how many. If the write fails, the tags are kept for the next flush."""
        with self._acked_lock:
            tags, self._acked = self._acked, []
        if not tags:
            return 0
        try:
            with self.pipe_or_acquire() as pipe:  # kombu's _remove_from_indices, for all
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except BaseException:
            with self._acked_lock:
                self._acked[:0] = tags
            raise
        return len(tags)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared: Any = None  # the channel's one client for commands (see conn_or_acquire)
    _take: Any = None  # TAKE, registered on the shared client
    take_batch = BATCH

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The client for a command: one per channel, on the channel's pool.

        kombu builds a new ``redis.Redis`` for every command outside the consumer's BRPOP
        (each delivery's unacked record, each ack, each event published): a profile of a
        worker at 300 jobs/s put 10 % of its CPU in ``Redis.__init__``. A client is only a
        front for its connection pool and is safe to share between threads, so one serves
        them all; it is made again when the channel has a new pool (after a reconnection or
        a fork)."""
        if client is not None:
            yield client
            return
        pool = self.pool
        shared = self._shared
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared = self._create_client()
        yield shared

    def close(self) -> None:
        qos = self._qos
        if qos is not None and not self.closed:
            try:
                qos.flush_acks()
            except Exception as exc:  # closing goes on: those messages are restored later
                log.warning("could not write the last acknowledgements on closing the channel "
                            "(%s): those messages are restored after the visibility timeout, "
                            "and their repeated deliveries are acknowledged unrun",
                            type(exc).__name__)
        super().close()
        # kombu disconnects the pool before it restores the unacknowledged messages, and the
        # restore opens it again (its connections were left to the garbage collector)
        self._disconnect_pools()

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own _brpop_read, with the decoding guarded
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = _envelope(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
                self._take_more(dest__item[0], dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _take_more(self, key: bytes | str, dest: str) -> None:
        """Up to ``BATCH`` more messages from the list ``key``, as the prefetch allows."""
        if self.take_batch < 1 or self.global_keyprefix:
            return
        room = self.qos.can_consume_max_estimate()
        if not room:
            return
        with self.conn_or_acquire() as client:
            if self._take is None or self._take.registered_client is not client:
                self._take = client.register_script(TAKE)
            try:
                reply = self._take(keys=[key, self.unacked_key, self.unacked_index_key],
                                   args=[min(room, self.take_batch), time()], client=client)
            except self.ResponseError as exc:  # an old Redis (no RPOP count): one at a time
                log.warning("taking one message per BRPOP: the broker refused TAKE (%s)", exc)
                self.take_batch = 0
                return
        for item, recorded in zip(reply[::2], reply[1::2], strict=True):
            payload = _envelope(item, dest)
            if payload is None:
                continue
            if recorded:
                self.qos.recorded.add(payload["properties"]["delivery_tag"])
            self.connection._deliver(payload, dest)


class Transport(kombu_redis.Transport):
    Channel = Channel
    flushes_acks = False  # set once an event loop flushes the channels' acks on each turn

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        loop.on_tick.add(self.flush_acks)
        self.flushes_acks = True

    def flush_acks(self) -> None:
        """Write the acks each channel has kept (the event loop calls it on every turn)."""
        for channel in list(self.channels):
            qos = channel._qos
            if qos is not None and not channel.closed:
                qos.flush_acks()


SCHEMES = ("redis", "rediss")


def register() -> None:
    """Resolve the broker URL schemes of the farm to this transport in this process, from now
    on (kombu's alias table; a scheme kombu had resolved already is forgotten)."""
    target = f"{__name__}:{Transport.__name__}"
    cache = getattr(kombu.transport, "_transport_cache", {})
    for scheme in SCHEMES:
        if kombu.transport.TRANSPORT_ALIASES.get(scheme) != target:
            kombu.transport.TRANSPORT_ALIASES[scheme] = target
            cache.pop(scheme, None)
