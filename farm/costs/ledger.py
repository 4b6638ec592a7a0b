"""The ledger: budgets and the cost breaker as every worker on every host shares them in
Redis. What a call is charged (``charge``), rebuilding a period's spend from Postgres
(``seed``), and settling a call when its cost is known (``settle``). The check and the
reservation run inside the limiter's acquire script (farm.capacity.scripts, with
farm.costs.ledger_lua), so a call's budget room and its rate-limit tokens are taken in one
atomic step.

Keys, all under the prefix P (default ``farm:budget``), B a budget id, W its period's key:
  P:ids                 set   budget ids (the mirror of Postgres' budgets table)
  P:synced              str   the mirror was loaded from Postgres (lost with Redis: reloaded)
  P:def:B               hash  budget (json), limit (nano-USD), mode, on_exceed
  P:B:W                 hash  seeded, spent, reserved (nano-USD), refused (when it last
                              turned a call away, Redis time)   EXPIREAT period end + 1 day
  P:B:W:res             zset  "grant|cost" -> reservation expiry   EXPIREAT period end + 1 day
  P:breaker:S:w         hash  s, cur, prev: the spend window of scope S ('all' or a model)
  P:breaker:S:open      str   since when the breaker of S is open
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from farm.costs import budgets as b
from farm.costs.estimate import from_nano, to_nano
from farm.costs.ledger_lua import SEED, SETTLE
from farm.costs.money import usd
from farm.store import budgets as rows
from farm.store.db import Database

log = logging.getLogger("farm.ledger")
OVERALL = "all"


class LedgerConfig(BaseModel):
    """The cost breaker's thresholds and the ledger's waits (built by farm.capacity.build)."""

    model_config = ConfigDict(frozen=True)

    breaker_usd_per_min: Decimal | None = None
    breaker_model_usd_per_min: dict[str, Decimal] = Field(default_factory=dict)
    breaker_window_s: float = Field(default=60.0, gt=0)
    breaker_close_share: float = Field(default=0.8, gt=0, le=1)
    busy_wait_s: float = Field(default=1.0, gt=0)  # room held only by in-flight reservations
    reservation_ttl_s: float = Field(default=180.0, gt=0)  # a dead worker's reservation

    def breakers_for(self, model: str) -> list[tuple[str, Decimal]]:
        out = [] if self.breaker_usd_per_min is None else [(OVERALL, self.breaker_usd_per_min)]
        if model in self.breaker_model_usd_per_min:
            out.append((model, self.breaker_model_usd_per_min[model]))
        return out


@dataclass(frozen=True)
class Covered:
    """One budget a call counts against, in the period it is made in."""

    budget: b.Budget
    window: b.Window


@dataclass(frozen=True)
class Charge:
    """What one call counts against: its worst case (nano-USD), the budgets covering it,
    and the spend-rate breakers watching it. Its keys and arguments follow the limiter's."""

    cost: int
    member: str
    covered: tuple[Covered, ...]
    breakers: tuple[tuple[str, Decimal], ...]
    keys: tuple[str, ...] = ()  # for the acquire script, after the limiter's
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class OverBudget:
    """A hard budget cannot take this call in its period: wait (until ``wait_s`` at most, or
    the budget is raised) or fail the job, as the budget says."""

    budget_id: str
    wait_s: float
    fail: bool
    spent: Decimal
    limit: Decimal
    cost: Decimal

    def explain(self) -> str:
        return (f"{budget_reason(self.budget_id)} spent {usd(self.spent, significant=4)} of "
                f"{usd(self.limit)}, and this call may cost up to "
                f"{usd(self.cost, significant=4)}")


def over_budget(charge: Charge, raw: Sequence[Any]) -> OverBudget:
    """The acquire script's answer {4, id, wait, fail, spent, limit} as a value."""
    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)
    return OverBudget(text(raw[1]), float(text(raw[2])), int(raw[3]) == 1,
                      from_nano(float(text(raw[4]))), from_nano(float(text(raw[5]))),
                      from_nano(charge.cost))


def budget_reason(budget_id: str) -> str:
    """The start of the wait_reason of a job waiting for a budget: ``farm budget set`` and
    ``rm`` wake the jobs waiting for the budget they changed."""
    return f"budget {budget_id}:"


class Ledger:
    """One per worker process (thread-safe: Redis scripts, and a cached budget list)."""

    def __init__(self, redis_client: Any, db: Database | None, config: LedgerConfig,
                 definitions: Callable[[], Sequence[b.Budget]], *,
                 prefix: str = "farm:budget", now: Callable[[], datetime] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """``now`` picks the budgets' periods (the host's UTC clock); ``clock`` replaces Redis
        TIME in the scripts, as the limiter's does (tests only)."""
        self.redis, self.db, self.config, self.prefix = redis_client, db, config, prefix
        self._clock = clock
        self._definitions = definitions
        self._now = now or (lambda: datetime.now(UTC))
        self._settle = redis_client.register_script(SETTLE)
        self._seed = redis_client.register_script(SEED)

    # --- keys --------------------------------------------------------------------------
    def def_key(self, budget_id: str) -> str:
        return f"{self.prefix}:def:{budget_id}"

    def totals_key(self, c: Covered) -> str:
        return f"{self.prefix}:{c.budget.id}:{c.window.key}"

    def breaker_keys(self, scope: str) -> tuple[str, str]:
        return f"{self.prefix}:breaker:{scope}:w", f"{self.prefix}:breaker:{scope}:open"

    # --- before a call -----------------------------------------------------------------
    def charge(self, tenant: str, queue: str, model: str, cost: Decimal | None) -> Charge | None:
        """What a call is checked and reserved against; None when no budget covers it and no
        breaker watches it. An unpriced call (cost None) reserves nothing."""
        covering = b.covering(self._definitions(), tenant, queue, model)
        breakers = self.config.breakers_for(model)
        if not covering and not breakers:
            return None
        now = self._now()
        nano = 0 if cost is None else to_nano(cost)
        charge = Charge(nano, f"{uuid.uuid4().hex}|{nano}",
                        tuple(Covered(x, b.window(x.period, now)) for x in covering),
                        tuple(breakers))
        return replace(charge, keys=tuple(self.script_keys(charge)),
                       args=tuple(self.script_args(charge)))

    def _budget_keys(self, c: Covered) -> tuple[str, str, str]:
        """A covered budget's definition, its period's totals and its reservations."""
        totals = self.totals_key(c)
        return self.def_key(c.budget.id), totals, f"{totals}:res"

    def script_keys(self, charge: Charge) -> list[str]:
        keys: list[str] = []
        for c in charge.covered:
            keys += self._budget_keys(c)
        for scope, _ in charge.breakers:
            keys += list(self.breaker_keys(scope))
        return keys

    def script_args(self, charge: Charge) -> list[str]:
        c = self.config
        args = [str(len(charge.covered)), str(charge.cost), charge.member,
                repr(float(c.busy_wait_s)), repr(float(c.reservation_ttl_s))]
        for cov in charge.covered:
            args += [cov.budget.id, repr(cov.window.end.timestamp())]
        args.append(str(len(charge.breakers)))
        wait = max(1.0, c.breaker_window_s / 6)
        for scope, usd_per_min in charge.breakers:
            args += [scope, str(to_nano(usd_per_min)), repr(float(c.breaker_window_s)),
                     repr(float(c.breaker_close_share)), repr(wait)]
        return args

    def seed(self, charge: Charge, index: int) -> None:
        """Rebuild the spend of budget ``index``'s period from the attempt rows (Redis has no
        count of it: the period began, or Redis lost its data). The first seed wins."""
        c = charge.covered[index]
        spent = Decimal(0) if self.db is None else rows.spent(
            self.db, c.budget, c.window.start, c.window.end)
        expire = int(c.window.end.timestamp()) + 86400
        if self._seed(keys=[self.totals_key(c)], args=[str(to_nano(spent)), str(expire)]):
            log.info("budget %s: the spend of %s rebuilt from Postgres: %s", c.budget.id,
                     c.window.key, spent)

    # --- after a call ------------------------------------------------------------------
    def settle(self, charge: Charge, actual: Decimal | None) -> list[b.Budget]:
        """The call's reservation comes back and its cost is spent; ``actual`` None (a call
        that may have been billed, cost unknown) spends the whole worst case. Returns the
        budgets whose alert line this spend crossed (each is logged as an alert)."""
        spend = charge.cost if actual is None else to_nano(actual)
        keys: list[str] = []
        for c in charge.covered:
            definition, totals, reservations = self._budget_keys(c)
            keys += [totals, reservations, definition]
        keys += [self.breaker_keys(scope)[0] for scope, _ in charge.breakers]
        args = ["" if self._clock is None else repr(float(self._clock())),
                str(len(charge.covered)), charge.member, str(charge.cost), str(spend),
                str(len(charge.breakers)),
                *(repr(float(self.config.breaker_window_s)) for _ in charge.breakers)]
        crossed = [charge.covered[int(i) - 1].budget for i in self._settle(keys=keys, args=args)]
        for budget in crossed:
            share = budget.alert_share or 1.0
            log.critical("ALERT: budget %s has spent %.0f%% of its %s limit (%s)", budget.id,
                         100 * share, usd(budget.limit_usd), budget.describe())
        return crossed

    # --- reading -----------------------------------------------------------------------
    def standing(self, budget: b.Budget) -> tuple[b.Window, Decimal | None, Decimal]:
        """A budget's current period, its spend (None: not counted in Redis yet) and what
        calls in flight have reserved."""
        w, spent, reserved, _ = self.standing_at(budget)
        return w, spent, reserved

    def standing_at(self, budget: b.Budget
                    ) -> tuple[b.Window, Decimal | None, Decimal, float | None]:
        """``standing`` and how long ago (seconds, Redis time) the budget last turned a call
        away as spent (None: not in this period)."""
        w = b.window(budget.period, self._now())
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.totals_key(Covered(budget, w)), "seeded", "spent", "reserved",
                   "refused")
        pipe.time()
        (seeded, spent, reserved, refused), (sec, usec) = pipe.execute()
        now = float(self._clock()) if self._clock else int(sec) + int(usec) / 1e6
        return (w, None if seeded is None else from_nano(int(spent or 0)),
                from_nano(int(reserved or 0)),
                None if refused is None else max(0.0, now - float(refused)))

    def breaker_state(self, scope: str) -> tuple[Decimal, bool]:
        """The spend rate (USD a minute) over the window, and whether the breaker is open."""
        from farm.costs import spend_rate as sr
        wkey, okey = self.breaker_keys(scope)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(wkey, "s", "cur", "prev")
        pipe.exists(okey)
        pipe.time()
        (s, cur, prev), is_open, (sec, usec) = pipe.execute()
        now = int(sec) + int(usec) / 1e6
        win = self.config.breaker_window_s
        w = sr.roll(sr.SpendWindow(None if s is None else float(s),
                                   int(float(cur or 0)), int(float(prev or 0))), now, win)
        rate = sr.per_minute(w, now, win)
        return from_nano(round(rate)), bool(is_open)
