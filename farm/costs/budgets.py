"""Budgets, pure: what a budget is, the period it counts, which calls it covers, and the
decision the ledger's Lua takes before a call (``decide``, its twin, checked step for step).

A budget caps spend over a calendar period in UTC (an hour, a day, a month) for the whole
farm, a tenant, a queue or a model. Hard budgets block: a call goes out only if the spend of
the period so far, plus what calls in flight have reserved, plus this call's worst case fits
the limit. Soft budgets never block; they alert once their spend reaches ``alert_share`` of
the limit (a hard budget may alert early too).

Before a call, every budget covering it is checked in one atomic step with the rate-limit
acquire, so that concurrent calls on any number of hosts cannot all slip past one remaining
dollar; each call then reserves its worst case in every covering budget, and gives the
difference back when its usage is known. The spend of a budget can so exceed its limit only
by what a call costs beyond its reserved worst case (input tokens estimated short).

At its limit a hard budget makes the call wait (``on_exceed=wait``: the job waits, no call,
no attempt used, until the period ends or the budget is raised) or fail (``fail``: the job
fails as ``budget_exceeded`` into the dead-letter queue). A budget whose room is only taken
by reservations of calls in flight makes the call wait briefly: the reservations come back
in seconds, so nothing fails for money that is not spent.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm.costs.money import usd


class Scope(StrEnum):
    GLOBAL = "global"
    TENANT = "tenant"
    QUEUE = "queue"
    MODEL = "model"


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class Mode(StrEnum):
    HARD = "hard"
    SOFT = "soft"


class OnExceed(StrEnum):
    WAIT = "wait"
    FAIL = "fail"


BUDGET_EXCEEDED = "budget_exceeded"
_NAME = re.compile(r"[A-Za-z0-9_.:-]*")  # the error class of a job failed by a budget


class Budget(BaseModel):
    """One budget. ``name`` is the tenant, queue or model it covers ('' for global)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: Scope
    name: str = Field(default="", max_length=128)
    period: Period
    limit_usd: Decimal = Field(gt=0, le=1_000_000, max_digits=16, decimal_places=9)
    mode: Mode = Mode.HARD
    alert_share: float | None = Field(default=None, gt=0, le=1)
    on_exceed: OnExceed = OnExceed.WAIT

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: letters, digits and _ . : - only")
        return value

    @model_validator(mode="after")
    def _named(self) -> Budget:
        if self.scope is Scope.GLOBAL and self.name:
            raise ValueError("a global budget has no name")
        if self.scope is not Scope.GLOBAL and not self.name:
            raise ValueError(f"a {self.scope.value} budget needs the {self.scope.value}'s name")
        if self.mode is Mode.SOFT and self.alert_share is None:
            raise ValueError("a soft budget needs the share of its limit to alert at")
        return self

    @property
    def id(self) -> str:
        """``tenant:search:day``; ``global:day`` for the whole farm."""
        if self.scope is Scope.GLOBAL:
            return f"global:{self.period.value}"
        return f"{self.scope.value}:{self.name}:{self.period.value}"

    def covers(self, tenant: str, queue: str, model: str) -> bool:
        return (self.scope is Scope.GLOBAL
                or (self.scope is Scope.TENANT and self.name == tenant)
                or (self.scope is Scope.QUEUE and self.name == queue)
                or (self.scope is Scope.MODEL and self.name == model))

    def describe(self) -> str:
        what = "the farm" if self.scope is Scope.GLOBAL else f"{self.scope.value} {self.name}"
        alert = "" if self.alert_share is None else f", alert at {self.alert_share:.0%}"
        act = "" if self.mode is Mode.SOFT else f", {self.on_exceed.value} at the limit"
        return (f"{self.mode.value} {usd(self.limit_usd)} a {self.period.value} for {what}"
                f"{act}{alert}")


def covering(budgets: Iterable[Budget], tenant: str, queue: str, model: str) -> list[Budget]:
    """The budgets a call of this tenant, queue and model counts against, by id."""
    return sorted((b for b in budgets if b.covers(tenant, queue, model)), key=lambda b: b.id)


@dataclass(frozen=True)
class Window:
    """One period of a budget: [start, end) in UTC, and its key (``2026-12-01``)."""

    key: str
    start: datetime
    end: datetime


def window(period: Period, now: datetime) -> Window:
    """The period that holds ``now`` (any timezone; the periods are UTC's)."""
    at = now.astimezone(UTC)
    if period is Period.HOUR:
        start = at.replace(minute=0, second=0, microsecond=0)
        return Window(start.strftime("%Y-%m-%dT%H"), start, start + timedelta(hours=1))
    if period is Period.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(start.strftime("%Y-%m-%d"), start, start + timedelta(days=1))
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    return Window(start.strftime("%Y-%m"), start, start + timedelta(days=days))


# --- the decision before a call (the Lua in farm.costs.ledger_lua does the same) -------------

@dataclass(frozen=True)
class Standing:
    """A budget's period as the ledger holds it, in nano-dollars (see farm.costs.estimate).
    ``seeded``: its spend has been rebuilt from Postgres (or counted since it began)."""

    limit: int
    hard: bool
    fail: bool
    seeded: bool = True
    spent: int = 0
    reserved: int = 0


@dataclass(frozen=True)
class Seed:
    """Budget ``index``'s period must first get its spend from Postgres."""

    index: int


@dataclass(frozen=True)
class Busy:
    """Budget ``index`` has room only once reservations of calls in flight come back."""

    index: int


@dataclass(frozen=True)
class Exhausted:
    """Budget ``index`` cannot take this call in this period: spent + worst case > limit."""

    index: int
    fail: bool


@dataclass(frozen=True)
class Reserve:
    """Every covering budget takes the reservation."""


Decision = Seed | Busy | Exhausted | Reserve


def decide(standings: Sequence[Standing], cost: int) -> Decision:
    """Before a call whose worst case is ``cost``: budgets in order, the first one that
    stops it decides. Reservations that expired are dropped before (the caller's job)."""
    for i, s in enumerate(standings):
        if not s.seeded:
            return Seed(i)
        if not s.hard:
            continue
        if s.spent + cost > s.limit:
            return Exhausted(i, s.fail)
        if s.spent + s.reserved + cost > s.limit:
            return Busy(i)
    return Reserve()


def settle(standing: Standing, reserved: int, actual: int, *, held: bool) -> Standing:
    """A call's end: its reservation (if the ledger still ``held`` it) comes back and its
    actual cost is spent. A period never seeded stays so: Postgres has the call."""
    if not standing.seeded:
        return standing
    back = reserved if held else 0
    return Standing(standing.limit, standing.hard, standing.fail, True,
                    standing.spent + actual, standing.reserved - back)
