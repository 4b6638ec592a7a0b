"""The per-job cost cap at submit: a job whose one call can cost more than its cap is
refused before anything is written. Pure: no I/O.

A job's cap is ``farm.costs.estimate.cost_cap`` (its own ``max_cost_usd``, else its
tenant's, else its queue's, else the farm's). The call checked is the dearest the job can
make: on its routed model and, when it allows fallback and its queue has a fallback model,
on that model too. A model with no price row has an unknown cost: it is left out, and a job
none of whose models has a price is not refused (nothing can be said of its cost).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from farm.batches.policy import batch_ttl, wants_batch
from farm.costs.estimate import CapCheck, WorstCase, at_batch_price, cost_cap, worst_case
from farm.costs.pricing import PriceBook
from farm.costs.prompt_cache import cache_ttl
from farm.jobs import FieldError, JobRequest, Route
from farm.settings import Settings


def job_cap(request: JobRequest, queue: str, settings: Settings) -> Decimal:
    """The most ``request`` may cost over all its calls on ``queue``, by the settings."""
    return cost_cap(request, queue, default=settings.max_cost_usd,
                    tenants=settings.tenant_max_cost_usd,
                    queues={q.name: q.max_cost_usd for q in settings.queues if q.max_cost_usd})


def call_models(request: JobRequest, route: Route, settings: Settings) -> tuple[str, ...]:
    """The models one call of the job may go to: its routed model, and its queue's fallback
    model when the job allows fallback."""
    models = [route.model]
    if request.allow_fallback:
        spec = next((q for q in settings.queues if q.name == route.queue), None)
        if spec is not None and spec.fallback_model and spec.fallback_model != route.model:
            models.append(spec.fallback_model)
    return tuple(models)


def batched(request: JobRequest, route: Route, settings: Settings) -> bool:
    """Whether the job waits for a Message Batch (farm.batches.policy.wants_batch)."""
    spec = next((q for q in settings.queues if q.name == route.queue), None)
    return wants_batch(request, None if spec is None else spec.batch, datetime.now(UTC),
                       settings.batch_deadline_s)


def dearest_call(request: JobRequest, route: Route, settings: Settings,
                 prices: PriceBook) -> WorstCase | None:
    """The largest worst case of one call over the models the job may call that have a
    price (at half price, with the hour's cache TTL, for a job that waits for a Message
    Batch); None when none has one."""
    ttl = cache_ttl(request, route.queue, settings)
    in_batch = batched(request, route, settings)
    if in_batch:
        ttl = batch_ttl(ttl)
    worst = [worst_case(price, request, ttl) for model in call_models(request, route, settings)
             if (price := prices.price(model)) is not None]
    dearest = max(worst, key=lambda w: w.usd, default=None)
    return at_batch_price(dearest) if in_batch and dearest is not None else dearest


def check_cost_cap(request: JobRequest, route: Route, settings: Settings,
                   prices: PriceBook) -> None:
    """Raise FieldError("max_cost_usd", the figures) when one call of the job can cost more
    than its cap."""
    worst = dearest_call(request, route, settings, prices)
    if worst is None:
        return
    check = CapCheck(job_cap(request, route.queue, settings), Decimal(0), worst)
    if not check.fits:
        raise FieldError("max_cost_usd", check.explain())
