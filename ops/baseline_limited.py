"""`make bench-limits`' plain-Celery baseline: the provider's rate limit configured the obvious
way, with Celery's own per-task ``rate_limit``, and nothing else (no shared limiter, no
routing, no accounting).

    BASELINE_BROKER_URL=redis://… BASELINE_RATE_LIMIT=600/m \\
        celery -A ops.baseline_limited worker -Q baseline-limited -P threads -c 100

``BASELINE_RATE_LIMIT`` is the task's ``rate_limit`` ("none": no limit). Celery enforces it
per worker *process*: three processes at "600/m" may send up to 1800/m together (in practice,
with ~100 tasks waiting per process, Celery 5.7 releases about one a second: see
ops/bench_limits.py). The client is the SDK's default (``max_retries`` 2: the SDK itself
retries a 429 after its retry-after; ``BASELINE_SDK_RETRIES`` changes it); every retry is one
more request at the simulator. A call that still fails is counted in Redis (hash
``baseline-limited:<run>``: ok, failed_<status>) instead of raising, so thousands of failures
cost no traceback logging; no Celery-level retry.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

import anthropic
import redis
from celery import Celery

QUEUE = "baseline-limited"
MODEL = os.environ.get("BASELINE_MODEL", "claude-sonnet-5-5")
RATE_LIMIT = os.environ.get("BASELINE_RATE_LIMIT", "600/m")
SDK_RETRIES = int(os.environ.get("BASELINE_SDK_RETRIES", str(anthropic.DEFAULT_MAX_RETRIES)))

# the worker needs BASELINE_BROKER_URL; the benchmark imports publish() and counts() only
app = Celery("baseline_limited", broker=os.environ.get("BASELINE_BROKER_URL"))
app.conf.update(
    task_serializer="json", accept_content=["json"], task_acks_late=True,
    worker_prefetch_multiplier=1, task_ignore_result=True, task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
)

_lock = threading.Lock()
_client: anthropic.Anthropic | None = None
_redis: redis.Redis | None = None


def _clients() -> tuple[anthropic.Anthropic, redis.Redis]:
    global _client, _redis
    with _lock:
        if _client is None or _redis is None:
            _client = anthropic.Anthropic(max_retries=SDK_RETRIES, timeout=120)
            _redis = redis.Redis.from_url(os.environ["BASELINE_BROKER_URL"])
    return _client, _redis


def counts_key(run: str) -> str:
    return f"{QUEUE}:{run}"


def publish(broker_url: str, run: str, prompts: Iterable[str], max_tokens: int) -> int:
    """The benchmark's side: one task message per prompt; returns how many were sent."""
    sender = Celery("baseline-limited-sender", broker=broker_url, set_as_current=False)
    sender.conf.task_serializer = "json"
    sent = 0
    with sender.producer_or_acquire() as producer:
        for prompt in prompts:
            sender.send_task("baseline_limited.call", args=(prompt, max_tokens, run),
                             queue=QUEUE, producer=producer)
            sent += 1
    sender.close()
    return sent


def counts(broker_url: str, run: str) -> dict[str, int]:
    """What the run's tasks recorded: ok, failed_<status or error class>."""
    with redis.Redis.from_url(broker_url, decode_responses=True) as client:
        return {str(k): int(v) for k, v in client.hgetall(counts_key(run)).items()}


@app.task(name="baseline_limited.call", acks_late=True,
          rate_limit=None if RATE_LIMIT == "none" else RATE_LIMIT)
def call(prompt: str, max_tokens: int, run: str) -> None:
    client, counter = _clients()
    try:
        client.messages.create(
            model=MODEL, max_tokens=max_tokens,
            messages=[{"role": "user", "content": prompt}],
        )
    except anthropic.APIStatusError as exc:
        counter.hincrby(counts_key(run), f"failed_{exc.status_code}", 1)
    except anthropic.APIError as exc:
        counter.hincrby(counts_key(run), f"failed_{type(exc).__name__}", 1)
    else:
        counter.hincrby(counts_key(run), "ok", 1)
