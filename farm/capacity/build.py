"""The capacity objects built from the farm's settings, at the edge (a worker process's
runtime, the operator commands): each gets only the config it needs."""

from __future__ import annotations

from typing import Any

import redis

from farm.capacity.admission import AdmissionConfig, Gate
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import BreakerConfig
from farm.capacity.combined import Paired
from farm.capacity.config import LimiterConfig
from farm.capacity.limiter import Limiter
from farm.costs.book import BudgetBook
from farm.costs.budgets import Budget
from farm.costs.ledger import Ledger, LedgerConfig
from farm.costs.pricing import default_pricebook
from farm.costs.prompt_cache import queue_ttls
from farm.reliability.hold import Polled
from farm.settings import Settings
from farm.store.db import Database


def limiter_config(settings: Settings) -> LimiterConfig:
    return LimiterConfig(models=settings.limits, target=settings.limit_target,
                         max_wait_s=settings.limit_max_wait_s,
                         max_delay_s=settings.limit_max_delay_s,
                         burst_s=settings.limit_burst_s, min_burst_s=settings.limit_min_burst_s,
                         burst_probe_s=settings.limit_burst_probe_s,
                         discovery_slots=settings.limit_discovery_slots,
                         grant_ttl_s=settings.request_timeout + 60)


def breaker_config(settings: Settings) -> BreakerConfig:
    return BreakerConfig(consecutive_failures=settings.breaker_failures,
                         cooldown_s=settings.breaker_cooldown_s,
                         max_cooldown_s=max(settings.breaker_max_cooldown_s,
                                            settings.breaker_cooldown_s),
                         probe_ttl_s=settings.request_timeout + 30)


def admission_config(settings: Settings) -> AdmissionConfig:
    return AdmissionConfig(
        fallbacks={q.name: q.fallback_model for q in settings.queues if q.fallback_model},
        paused_recheck_s=settings.hold_recheck_s, sleep_max_s=settings.limit_sleep_s,
        defer_max_s=settings.defer_max_s, max_cost_usd=settings.max_cost_usd,
        tenant_max_cost_usd=settings.tenant_max_cost_usd,
        queue_max_cost_usd={q.name: q.max_cost_usd for q in settings.queues
                            if q.max_cost_usd is not None},
        prompt_cache=settings.prompt_cache, queue_prompt_cache=queue_ttls(settings),
        outage_patience_s=settings.redis_patience_s)


def ledger_config(settings: Settings) -> LedgerConfig:
    return LedgerConfig(breaker_usd_per_min=settings.cost_breaker_usd_per_min,
                        breaker_model_usd_per_min=settings.cost_breaker_model_usd_per_min,
                        breaker_window_s=settings.cost_breaker_window_s,
                        breaker_close_share=settings.cost_breaker_close_share,
                        reservation_ttl_s=settings.request_timeout + 60)


def redis_ledger(redis_client: Any, settings: Settings, db: Database | None) -> Ledger:
    """The budgets (read from their Redis mirror at most once a second; loaded from Postgres
    when Redis lost it) and the cost breakers."""
    book = None if db is None else BudgetBook(redis_client, db)
    definitions = Polled(book.mirrored if book else list, list[Budget](), 1.0)
    return Ledger(redis_client, db, ledger_config(settings), definitions.get)


def redis_limiter(redis_client: Any, settings: Settings) -> Limiter:
    return Limiter(redis_client, limiter_config(settings))


def redis_breaker(redis_client: Any, settings: Settings) -> Breaker:
    return Breaker(redis_client, breaker_config(settings))


def redis_gate(redis_client: Any, settings: Settings, db: Database | None = None) -> Gate:
    """The admission gate of a worker process, on the cluster's shared Redis state (the
    breaker and the limiter paired: one round trip per step); with the farm's
    Postgres ``db`` (farm.store.db), the budgets too."""
    limiter, breaker = redis_limiter(redis_client, settings), redis_breaker(redis_client, settings)
    return Gate(limiter, breaker, admission_config(settings),
                ledger=redis_ledger(redis_client, settings, db), prices=default_pricebook(),
                pair=Paired(limiter, breaker), transient=redis_outage)


def redis_outage(exc: Exception) -> bool:
    """Redis unreachable (restarting, a cut link), not a script or data error."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
