"""Fairness between tenants, pure: who is over its fair share of a model's limits.

Max-min among the tenants that are waiting. Each tenant's granted requests are counted with
exponential decay, half-life H = tenant_window_s / 2 (``decayed``). A tenant that is
refused, and is not over its share itself, is recorded as starved with its count, until its
wait is over + STARVE_GRACE_S; of several, the one with the fewest recent grants is kept
(``starve``). While a tenant is starved, any other tenant whose count is above FAIR_SLACK *
the starved one's + 1 is over its fair share (``over_share``): ``farm.capacity.limits``
lets it take a rate limit's token only when the bucket is full, gives it one priority
lower's share of the slots, and tells the worker to give the slot back instead of waiting
in it. The starved tenant's next grant ends its record.

So a tenant with a backlog keeps the whole rate while nobody else waits, and yields to one
with fewer recent calls the moment that one has to wait; tenants with the same demand never
yield to each other; and one that has stopped asking, however much it used, changes
nothing. The Lua twin is in ``farm.capacity.scripts`` (ACQUIRE).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from farm.capacity.config import LimiterConfig

FAIR_SLACK = 1.25  # over its fair share: above 1.25 x the starved tenant's recent grants + 1
STARVE_GRACE_S = 1.0  # a refused tenant counts as starved until its wait is over + this


@dataclass(frozen=True)
class TenantUsage:
    count: float  # decayed count of granted requests
    updated: float


@dataclass(frozen=True)
class Starved:
    """A tenant that was refused: its decayed count of grants (``count`` as of ``at``) and
    until when it waits."""

    tenant: str
    count: float
    at: float
    until: float


def decayed(usage: TenantUsage | None, now: float, half_life: float) -> float:
    if usage is None:
        return 0.0
    return usage.count * 2 ** (-(now - usage.updated) / half_life)


def _waiting(starved: Starved | None, now: float, tenant: str) -> Starved | None:
    """The starved record that counts for ``tenant`` now: another tenant's, not expired."""
    if starved is None or starved.until <= now or starved.tenant == tenant:
        return None
    return starved


def over_share(config: LimiterConfig, starved: Starved | None,
               usage: Mapping[str, TenantUsage], now: float, tenant: str) -> bool:
    """Whether ``tenant`` is over its fair share: another tenant, with markedly fewer recent
    grants, is waiting."""
    other, half = _waiting(starved, now, tenant), config.tenant_window_s / 2
    if other is None:
        return False
    used = decayed(usage.get(tenant), now, half)
    return used > FAIR_SLACK * decayed(TenantUsage(other.count, other.at), now, half) + 1


def starve(config: LimiterConfig, starved: Starved | None, usage: Mapping[str, TenantUsage],
           now: float, tenant: str, wait_s: float) -> Starved | None:
    """The starved record after ``tenant`` (not over its share) was told to wait
    ``wait_s``: its own, unless another tenant with fewer recent grants waits."""
    half = config.tenant_window_s / 2
    used = decayed(usage.get(tenant), now, half)
    other = _waiting(starved, now, tenant)
    if other is not None and used >= decayed(TenantUsage(other.count, other.at), now, half):
        return starved
    return Starved(tenant, used, now, now + wait_s + STARVE_GRACE_S)
