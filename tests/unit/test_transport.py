"""The hardened Redis channel (farm.broker.transport): an item on a queue that is not a
message is dropped, and the log says why and how big it was, never what it held."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from farm.broker.transport import Channel

SEP = "\x06\x16"


class _Client:
    """What the channel reads a BRPOP reply from: one (queue key, item) pair."""

    def __init__(self, reply: tuple[bytes, bytes]) -> None:
        self.reply, self.connection = reply, object()

    def parse_response(self, connection: object, command: str, **_: Any) -> tuple[bytes, bytes]:
        assert command == "BRPOP"
        return self.reply


class _Connection:
    def __init__(self) -> None:
        self.delivered: list[tuple[dict[str, Any], str]] = []

    def _deliver(self, payload: dict[str, Any], queue: str) -> None:
        self.delivered.append((payload, queue))


class _Cycle:
    def rotate(self, queue: str) -> None:
        pass


def _read(item: bytes) -> _Connection:
    """One BRPOP read of ``item`` on queue haiku-simple by the farm's channel (its kombu
    state stubbed: no Redis)."""
    channel = Channel.__new__(Channel)
    connection = _Connection()
    state = {"client": _Client((f"haiku-simple{SEP}3".encode(), item)),
             "connection": connection, "connection_errors": (), "sep": SEP,
             "_queue_cycle": _Cycle(), "take_batch": 0}  # no Redis to take more from
    for name, value in state.items():
        object.__setattr__(channel, name, value)
    assert channel._brpop_read() is True
    return connection


@pytest.mark.parametrize("item", [
    b"SECRET-GARBAGE not json at all",
    b'{"SECRET-GARBAGE": "json, but not an envelope"}',
    b'{"body": "x", "properties": "SECRET-GARBAGE"}',
    b'["SECRET-GARBAGE", ',
])
def test_a_dropped_item_is_logged_by_size_not_content(
    item: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="farm.broker"):
        connection = _read(item)
    assert connection.delivered == []
    assert "SECRET" not in caplog.text
    [record] = caplog.records
    assert record.getMessage().startswith(
        "dropped an item on queue haiku-simple that is not a message")
    assert f"({len(item)} bytes, not shown)" in record.getMessage()


def test_a_message_is_delivered() -> None:
    connection = _read(b'{"body": "e30=", "properties": {"delivery_tag": "1"}}')
    assert [queue for _, queue in connection.delivered] == ["haiku-simple"]
