"""Per-process resources of a worker: built once from settings, shared by all threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import anthropic
from sqlalchemy.engine import Engine

from farm.db import make_engine
from farm.llm import make_client
from farm.policies import RetryPolicy
from farm.pricing import PriceBook, default_pricebook
from farm.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    client: anthropic.Anthropic
    prices: PriceBook
    policies: dict[str, RetryPolicy]

    def policy(self, queue: str) -> RetryPolicy:
        return self.policies.get(queue) or self.policies.get("default") or RetryPolicy()


_lock = threading.Lock()
_runtime: Runtime | None = None


def build(settings: Settings, policies: dict[str, RetryPolicy]) -> Runtime:
    from farm.celery_app import resolve_urls

    _, database_url = resolve_urls(settings)
    pool = settings.db_pool_size
    return Runtime(
        settings=settings,
        # every worker statement stands alone: autocommit saves BEGIN/COMMIT round trips
        engine=make_engine(database_url, pool_size=pool, max_overflow=pool * 2,
                           autocommit=True, pre_ping=False),
        client=make_client(settings),
        prices=default_pricebook(),
        policies=policies,
    )


def get(settings: Settings, policies: dict[str, RetryPolicy]) -> Runtime:
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build(settings, policies)
    return _runtime


def reset() -> None:
    """Drop the process's runtime (after fork, or in tests)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.engine.dispose()
            _runtime.client.close()
        _runtime = None
