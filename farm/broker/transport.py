"""The Redis transport, hardened: an item on a queue that is not a message is dropped with a
logged reason instead of stopping the worker.

kombu's Redis channel decodes each popped item inline in its consumer loop; an item that is
not JSON (anyone can LPUSH to a Redis list) raises there and the worker dies with
"Unrecoverable error". Celery handles bad bodies, unknown tasks and refused content types
itself once an item is a well-formed envelope; this channel makes sure it is one.

It is selected by the broker URL's scheme: ``register`` (called by farm.app.create_app) makes
kombu resolve ``redis://`` and ``rediss://`` to it. Named by a ``broker_transport`` path
instead, it would make the connection's URL ``farm.broker.transport:Transport://…``, which
no monitor can read: Flower answers "'redis' broker is not supported" on its Broker page and
to /api/queues/length.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
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


class Channel(kombu_redis.Channel):
    _shared: Any = None  # the channel's one client for commands (see conn_or_acquire)

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
            try:
                payload = decode_envelope(item)
            except ValueError as exc:
                # why and how big, never what it holds (anyone may push anything to a list)
                log.error("dropped an item on queue %s that is not a message: %s (%d bytes, "
                          "not shown)", dest, _reason(exc), _size(item))
                return True
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


class Transport(kombu_redis.Transport):
    Channel = Channel


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
