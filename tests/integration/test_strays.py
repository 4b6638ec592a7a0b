"""Stray farm messages (on a Redis list no farm worker consumes) are moved to the intake
queue; other applications' messages and the farm's own queues are left alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from farm.broker.layout import INTAKE_QUEUE, queue_keys
from farm.reliability.strays import is_farm_job, rescue_strays


def message(task: str, job_id: str) -> bytes:
    return json.dumps({"body": "e30=", "headers": {"task": task, "id": job_id},
                       "properties": {"delivery_tag": job_id}}).encode()


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def test_farm_messages_on_unconsumed_lists_move_to_intake(broker: redis.Redis) -> None:
    stray, foreign = message("farm.run_job", "a" * 36), message("other.task", "b" * 36)
    own = message("farm.run_job", "c" * 36)
    broker.rpush("celery", foreign, stray, b"not json")
    broker.rpush("haiku-simple:3", own)  # a consumed queue's priority list
    broker.set("a-string", "x")
    moved = rescue_strays(broker, ["haiku-simple", INTAKE_QUEUE])
    assert moved == 1
    assert broker.lrange("celery", 0, -1) == [foreign, b"not json"]
    assert broker.lrange(queue_keys(INTAKE_QUEUE)[0], 0, -1) == [stray]
    assert broker.lrange("haiku-simple:3", 0, -1) == [own]
    assert rescue_strays(broker, ["haiku-simple", INTAKE_QUEUE]) == 0  # nothing twice


def test_what_counts_as_a_farm_job() -> None:
    assert is_farm_job(message("farm.run_job", "x"))
    assert not is_farm_job(message("farm.dead_letter", "x"))
    assert not is_farm_job(b"[1, 2]") and not is_farm_job(b"\xff") and not is_farm_job(b"{")
