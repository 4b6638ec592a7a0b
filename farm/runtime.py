"""Per-process resources of a worker: built once from settings, shared by all threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import anthropic
from sqlalchemy.engine import Engine

from farm.admission import Gate
from farm.breaker import Breaker, BreakerConfig
from farm.db import make_engine
from farm.hold import HoldCheck
from farm.leases import Republish, Running, start_threads
from farm.limiter import Limiter
from farm.limits import LimiterConfig
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
    running: Running
    stop: threading.Event
    hold: HoldCheck
    gate: Gate

    def policy(self, queue: str) -> RetryPolicy:
        return self.policies.get(queue) or self.policies.get("default") or RetryPolicy()


_lock = threading.Lock()
_runtime: Runtime | None = None


def build(settings: Settings, policies: dict[str, RetryPolicy],
          republish: Republish | None = None) -> Runtime:
    from farm.celery_app import resolve_urls

    broker_url, database_url = resolve_urls(settings)
    import redis

    pool = settings.db_pool_size
    # the hold flag, leases, the orphan sweep, the limiter and the breaker: one client, whose
    # pool grows to one connection per thread that uses it at the same time
    broker = redis.Redis.from_url(broker_url)
    runtime = Runtime(
        settings=settings,
        # every worker statement stands alone: autocommit saves BEGIN/COMMIT round trips
        engine=make_engine(database_url, pool_size=pool, max_overflow=pool * 2,
                           autocommit=True, pre_ping=False),
        client=make_client(settings),
        prices=default_pricebook(),
        policies=policies,
        running=Running(),
        stop=threading.Event(),
        hold=HoldCheck(broker, every_s=min(2.0, settings.hold_recheck_s)),
        gate=make_gate(broker, settings),
    )
    if republish is not None:
        start_threads(runtime.engine, runtime.running, republish, lease_s=settings.lease_s,
                      reaper_interval_s=settings.reaper_interval_s, stop=runtime.stop,
                      broker=broker, orphan_sweep_s=settings.orphan_sweep_s,
                      orphan_age_s=settings.orphan_age_s)
    return runtime


def limiter_config(settings: Settings) -> LimiterConfig:
    return LimiterConfig(models=settings.limits, target=settings.limit_target,
                         max_wait_s=settings.limit_max_wait_s,
                         max_delay_s=settings.limit_max_delay_s,
                         grant_ttl_s=settings.request_timeout + 60)


def breaker_config(settings: Settings) -> BreakerConfig:
    return BreakerConfig(consecutive_failures=settings.breaker_failures,
                         cooldown_s=settings.breaker_cooldown_s,
                         max_cooldown_s=max(settings.breaker_max_cooldown_s,
                                            settings.breaker_cooldown_s),
                         probe_ttl_s=settings.request_timeout + 30)


def make_gate(redis_client: object, settings: Settings) -> Gate:
    return Gate(Limiter(redis_client, limiter_config(settings)),
                Breaker(redis_client, breaker_config(settings)), settings)


def get(settings: Settings, policies: dict[str, RetryPolicy],
        republish: Republish | None = None) -> Runtime:
    """The process's runtime; the first call builds it (and, given `republish`, starts the
    lease-renewal and reaper threads)."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = build(settings, policies, republish)
    return _runtime


def current() -> Runtime | None:
    """The process's runtime if it is built (the per-task fast path)."""
    return _runtime


def reset() -> None:
    """Drop the process's runtime (after fork, or in tests)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.stop.set()
            _runtime.engine.dispose()
            _runtime.client.close()
        _runtime = None
