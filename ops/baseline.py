"""The benchmark's baseline: a plain Celery task calling the same simulator through the
same SDK, with no routing, validation or accounting. Records completion times in Redis.

    celery -A ops.baseline worker -Q baseline -P threads -c 100
"""

from __future__ import annotations

import os
import threading
import time

import anthropic
import redis
from celery import Celery

app = Celery("baseline", broker=os.environ["BASELINE_BROKER_URL"])
app.conf.update(
    task_serializer="json", accept_content=["json"], task_acks_late=True,
    worker_prefetch_multiplier=1, task_ignore_result=True, task_default_queue="baseline",
    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
)

_local = threading.Lock()
_client: anthropic.Anthropic | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[anthropic.Anthropic, redis.Redis]:
    global _client, _redis
    with _local:
        if _client is None or _redis is None:
            _client = anthropic.Anthropic(max_retries=0, timeout=120)
            _redis = redis.Redis.from_url(os.environ["BASELINE_BROKER_URL"])
    return _client, _redis


@app.task(name="baseline.call", acks_late=True)
def call(prompt: str, max_tokens: int, run: str, system: str | None = None) -> None:
    client, counter = _clients()
    client.messages.create(
        model="claude-haiku-4-5", max_tokens=max_tokens,
        messages=[{"role": "user", "content": prompt}],
        system=system or anthropic.omit,
    )
    counter.rpush(f"baseline:done:{run}", time.time())  # completion time
