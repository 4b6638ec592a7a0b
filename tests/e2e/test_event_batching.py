"""A worker publishes its task events a batch at a time (farm.worker.event_step): every
FARM_EVENTS_FLUSH_S, many events a message, and what is still buffered when it stops.

The events are read off the broker raw (the Redis channel Flower listens on), so the test
counts both the messages and the events in them."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from farm.client import Farm
from farm.jobs import JobStatus
from tests_e2e import running_workers, wait_until, with_status


@dataclass
class Seen:
    messages: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, ids: list[uuid.UUID], kind: str) -> set[str]:
        wanted = {str(i) for i in ids}
        return {e["uuid"] for e in list(self.events)
                if e.get("type") == kind and e.get("uuid") in wanted}


def _events(payload: bytes) -> list[dict[str, Any]]:
    envelope = json.loads(payload)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    found = json.loads(body)
    return found if isinstance(found, list) else [found]


@pytest.fixture
def seen(e2e_env: dict[str, str]) -> Iterator[Seen]:
    """Every task-event message on the broker while the test runs."""
    got = Seen()
    client = redis.Redis.from_url(e2e_env["FARM_BROKER_URL"])
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev/task.*")
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                got.messages += 1
                got.events.extend(_events(message["data"]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        done.set()
        thread.join(5)
        pubsub.close()
        client.close()


def test_events_go_out_many_a_message(e2e_env: dict[str, str], farm: Farm, seen: Seen,
                                      tmp_path: Path) -> None:
    env = {**e2e_env, "FARM_EVENTS_FLUSH_S": "0.5"}
    with running_workers(env, [(tmp_path / "worker.log", "haiku-simple", 20)]):
        ids = farm.submit_many([{"prompt": f"batched events {i}?", "complexity": "simple"}
                                for i in range(40)])
        assert all(v.status is JobStatus.SUCCEEDED for v in farm.wait(ids, timeout=90))
        wait_until(lambda: None if len(seen.of(ids, "task-succeeded")) == len(ids)
                   else f"{len(seen.of(ids, 'task-succeeded'))} task-succeeded events",
                   timeout=15)
    mine = [e for e in seen.events if e.get("uuid") in {str(i) for i in ids}]
    assert {e["type"] for e in mine} >= {"task-received", "task-started", "task-succeeded"}
    # 40 jobs, 3 events each, over a few flushes of half a second: a handful of messages
    assert seen.messages * 5 <= len(seen.events), (seen.messages, len(seen.events))


def test_what_is_buffered_goes_out_when_the_worker_stops(
        e2e_env: dict[str, str], farm: Farm, seen: Seen, tmp_path: Path) -> None:
    # a flush a minute: within the test only the stop publishes the buffer
    env = {**e2e_env, "FARM_EVENTS_FLUSH_S": "60"}
    with running_workers(env, [(tmp_path / "worker.log", "haiku-simple", 5)]) as [worker]:
        ids = farm.submit_many([{"prompt": f"buffered events {i}?", "complexity": "simple"}
                                for i in range(5)])
        assert all(v.status is JobStatus.SUCCEEDED for v in farm.wait(ids, timeout=90))
        # every job ran and ended (its row says so): its events are in the worker's buffer
        assert with_status(farm.engine, ids, JobStatus.SUCCEEDED.value) == {str(i) for i in ids}
        assert seen.of(ids, "task-succeeded") == set()
    # the worker was stopped (a warm shutdown): the step's stop published the buffer
    wait_until(lambda: None if len(seen.of(ids, "task-succeeded")) == len(ids)
               else f"{len(seen.of(ids, 'task-succeeded'))} task-succeeded events", timeout=10)
    assert seen.of(ids, "task-succeeded") == {str(i) for i in ids}
    assert worker.returncode == 0
