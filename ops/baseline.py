"""The benchmark's baseline: a plain Celery task calling the same simulator through the
same SDK, with no routing, validation or accounting. Records completion times in Redis.

    celery -A ops.baseline worker -Q baseline -P threads -c 100

The SDK client is the SDK's default (what a plain Celery user gets: a pool of 1000
connections, 100 kept alive; a pool that keeps all of them alive measured no faster at
C=1000, 154 against 174 jobs/s in one run). The completion counter's Redis client holds
BASELINE_CONCURRENCY + 32 connections (the bench sets it to the worker's -c; default 100):
redis-py's default pool of 100 raises "Too many connections" once more than 100 threads
record a completion at once.

With BASELINE_CLIENTS=grouped it calls through the farm's client layout instead
(farm.provider.clients: one client per 100 threads, each keeping its threads' connections
alive), and nothing else of the farm: the most a Celery task making this SDK call reaches in
one process, the ceiling the wide scenario prints beside the farm.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import anthropic
import httpx2
import redis
from celery import Celery

from farm.provider.clients import Clients

app = Celery("baseline", broker=os.environ["BASELINE_BROKER_URL"])
app.conf.update(
    task_serializer="json", accept_content=["json"], task_acks_late=True,
    worker_prefetch_multiplier=1, task_ignore_result=True, task_default_queue="baseline",
    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
)
CONCURRENCY = int(os.environ.get("BASELINE_CONCURRENCY", "100"))

GROUPED = os.environ.get("BASELINE_CLIENTS", "default") == "grouped"

_local = threading.Lock()
_sdk: Callable[[], anthropic.Anthropic] | None = None  # the calling thread's SDK client
_redis: redis.Redis | None = None


def _grouped_client(connections: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(max_retries=0, timeout=120, http_client=anthropic.DefaultHttpxClient(
        limits=httpx2.Limits(max_connections=connections,
                             max_keepalive_connections=connections)))


def _clients() -> tuple[anthropic.Anthropic, redis.Redis]:
    global _sdk, _redis
    if _sdk is None or _redis is None:  # made once, by the first task
        with _local:
            if _sdk is None or _redis is None:
                if GROUPED:
                    _sdk = Clients(_grouped_client, CONCURRENCY).current
                else:
                    client = anthropic.Anthropic(max_retries=0, timeout=120)
                    _sdk = lambda: client  # noqa: E731
                _redis = redis.Redis.from_url(os.environ["BASELINE_BROKER_URL"],
                                              max_connections=CONCURRENCY + 32)
    return _sdk(), _redis


@app.task(name="baseline.call", acks_late=True)
def call(prompt: str, max_tokens: int, run: str, system: str | None = None) -> None:
    client, counter = _clients()
    client.messages.create(
        model="claude-haiku-4-5", max_tokens=max_tokens,
        messages=[{"role": "user", "content": prompt}],
        system=system or anthropic.omit,
    )
    counter.rpush(f"baseline:done:{run}", time.time())  # completion time
