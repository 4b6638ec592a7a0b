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
(farm.provider.clients: one client per 10 threads, each keeping its threads' connections
alive, one TLS context for all), and nothing else of the farm: the most a Celery task making
this SDK call reaches in one process, the ceiling the wide scenario prints beside the farm.

With BASELINE_CLIENTS=loop the task hands its call to one asyncio event loop in the worker
process (a thread of its own; the SDK's AsyncAnthropic, one client per 100 slots, taken in
turn) and waits for the answer: what Celery's threads pool reaches when the calls run on an
event loop and not on its threads, the measure of an asyncio execution path for the wide
scenario.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

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

CLIENTS = os.environ.get("BASELINE_CLIENTS", "default")
if CLIENTS not in ("default", "grouped", "loop"):
    raise SystemExit(f"baseline: BASELINE_CLIENTS is default, grouped or loop, not {CLIENTS!r}")

_local = threading.Lock()
_sdk: Callable[[], anthropic.Anthropic] | None = None  # the calling thread's SDK client
_redis: redis.Redis | None = None


def _grouped_client(connections: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(max_retries=0, timeout=120, http_client=anthropic.DefaultHttpxClient(
        limits=httpx2.Limits(max_connections=connections,
                             max_keepalive_connections=connections), verify=_tls()))


_tls = functools.cache(httpx2.create_ssl_context)  # one for all the clients, as in the farm


class _Loop:
    """One event loop on a thread of its own making every call: ``messages.create`` (the
    sync client's signature) runs the call there and waits for its answer."""

    def __init__(self, concurrency: int) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="calls", daemon=True).start()
        per = 100
        self._clients = itertools.cycle([
            anthropic.AsyncAnthropic(
                max_retries=0, timeout=120, http_client=anthropic.DefaultAsyncHttpxClient(
                    limits=httpx2.Limits(max_connections=per, max_keepalive_connections=per)))
            for _ in range(max(1, -(-concurrency // per)))])
        self.messages = self

    def create(self, **kwargs: object) -> object:
        call = next(self._clients).messages.create(**kwargs)  # type: ignore[call-overload]
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()


def _clients() -> tuple[anthropic.Anthropic, redis.Redis]:
    global _sdk, _redis
    if _sdk is None or _redis is None:  # made once, by the first task
        with _local:
            if _sdk is None or _redis is None:
                if CLIENTS == "grouped":
                    _sdk = Clients(_grouped_client, CONCURRENCY).current
                elif CLIENTS == "loop":
                    looped: Any = _Loop(CONCURRENCY)
                    _sdk = lambda: looped  # noqa: E731
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
