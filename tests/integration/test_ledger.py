"""The ledger in real Redis (budgets and the cost breaker inside the limiter's acquire
script), against its pure twins (farm.costs.budgets.decide, farm.costs.spend_rate), and its
spend rebuilt from real Postgres rows."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis

from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.limiter import Limiter
from farm.capacity.limits import Grant, Wait
from farm.costs import budgets as b
from farm.costs import spend_rate as sr
from farm.costs.book import BudgetBook
from farm.costs.estimate import from_nano, to_nano
from farm.costs.ledger import Charge, Ledger, LedgerConfig, OverBudget
from farm.jobs import Priority
from farm.store.db import Database
from tests_support import fresh_database

MODEL = "claude-haiku-4-5"
# The scripts run on the rig's clock, but Redis expires a period's keys by its own: at the
# period's end + 1 day (EXPIREAT). A fixed date stopped working a day after it: the seeded
# count expired as it was written and admit() asked for a seed again, forever. Today at
# 12:30 UTC keeps every period of these tests unexpired while they run.
NOW = datetime.now(UTC).replace(hour=12, minute=30, second=0, microsecond=0)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Database]:
    with fresh_database(database_url, "ledger", "head") as url:
        made = Database(url, size=4)
        yield made
        made.close()


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(broker_url, max_connections=400)
    yield c
    c.close()


class Rig:
    def __init__(self, client: redis.Redis, db: Database, budgets: list[b.Budget], *,
                 limits: ModelLimits | None = None, keep_rows: bool = False,
                 **config: Any) -> None:
        self.clock = Clock(NOW.timestamp())
        self.book = BudgetBook(client, db)
        with db.begin() as conn:
            conn.execute("DELETE FROM budgets")
            if not keep_rows:
                conn.execute("DELETE FROM attempts; DELETE FROM jobs")
        for budget in budgets:
            self.book.set(budget)
        self.ledger = Ledger(client, db, LedgerConfig(**config), self.book.mirrored,
                             now=lambda: datetime.fromtimestamp(self.clock.t, UTC),
                             clock=self.clock)
        models = {MODEL: limits} if limits else {}
        # buckets of a minute, no discovery: these tests are about budgets, not pacing
        self.limiter = Limiter(client, LimiterConfig(models=models, burst_s=60,
                                                     discovery_slots=0), clock=self.clock)

    def charge(self, usd: str, tenant: str = "a", queue: str = "q") -> Charge:
        charge = self.ledger.charge(tenant, queue, MODEL, Decimal(usd))
        assert charge is not None
        return charge

    def acquire(self, charge: Charge, tenant: str = "a") -> Any:
        return self.limiter.acquire(MODEL, input_tokens=10, output_tokens=10,
                                    priority=Priority.NORMAL, tenant=tenant, charge=charge)

    def admit(self, charge: Charge, tenant: str = "a") -> Any:
        """Acquire, seeding first when asked (what the gate does)."""
        got = self.acquire(charge, tenant)
        while isinstance(got, b.Seed):
            self.ledger.seed(charge, got.index)
            got = self.acquire(charge, tenant)
        return got

    def standing(self, budget: b.Budget) -> tuple[Decimal | None, Decimal]:
        _, spent, reserved = self.ledger.standing(budget)
        return spent, reserved


def hard(limit: str, scope: b.Scope = b.Scope.TENANT, name: str = "a",
         on_exceed: b.OnExceed = b.OnExceed.WAIT) -> b.Budget:
    return b.Budget(scope=scope, name="" if scope is b.Scope.GLOBAL else name,
                    period=b.Period.DAY, limit_usd=Decimal(limit), on_exceed=on_exceed)


def test_a_new_period_is_seeded_from_postgres_then_counted(client: redis.Redis,
                                                           db: Database) -> None:
    job = uuid.uuid4()
    with db.begin() as conn:
        conn.execute("DELETE FROM attempts; DELETE FROM jobs")
        conn.execute(
            "INSERT INTO jobs (id, status, complexity, queue, model, priority, tenant, request)"
            " VALUES (%(id)s, 'succeeded', 'simple', 'q', %(m)s, 'normal', 'a', '{}')",
            {"id": job, "m": MODEL})
        for n, (at, cost) in enumerate([(NOW - timedelta(hours=1), "0.30"),
                                        (NOW - timedelta(days=1), "5.00")], 1):
            conn.execute(
                "INSERT INTO attempts (job_id, attempt, queue, model, outcome, cost_usd,"
                " started_at, finished_at) VALUES (%(j)s, %(n)s, 'q', %(m)s, 'ok', %(c)s, %(t)s,"
                " %(t)s)",
                {"j": job, "n": n, "m": MODEL, "c": Decimal(cost), "t": at})
    budget = hard("1.00")
    rig = Rig(client, db, [budget], keep_rows=True)
    charge = rig.charge("0.50")
    assert rig.acquire(charge) == b.Seed(0)  # Redis has no count of today yet
    got = rig.admit(charge)
    assert isinstance(got, Grant) and got.charge == charge
    # yesterday's $5 is not today's; today's $0.30 is, and the call's $0.50 is reserved
    assert rig.standing(budget) == (Decimal("0.3"), Decimal("0.5"))
    over = rig.admit(rig.charge("0.50"))
    assert isinstance(over, Wait) and over.reason.startswith("budget tenant:a:day: in-flight")
    rig.ledger.settle(charge, Decimal("0.10"))
    assert rig.standing(budget) == (Decimal("0.4"), Decimal(0))
    assert isinstance(rig.admit(rig.charge("0.50")), Grant)
    # Redis loses everything (a restart): the mirror and today's count come back from Postgres
    client.flushdb()
    rig2 = Rig(client, db, [budget], keep_rows=True)
    assert isinstance(rig2.admit(rig2.charge("0.50")), Grant)
    assert rig2.standing(budget) == (Decimal("0.3"), Decimal("0.5"))


def test_a_spent_budget_waits_or_fails_as_it_says_and_a_raise_lets_calls_through(
        client: redis.Redis, db: Database) -> None:
    budget = hard("1.00", on_exceed=b.OnExceed.FAIL)
    rig = Rig(client, db, [budget])
    first = rig.charge("0.60")
    assert isinstance(rig.admit(first), Grant)
    rig.ledger.settle(first, Decimal("0.60"))
    over = rig.admit(rig.charge("0.60"))
    assert isinstance(over, OverBudget) and over.fail and over.budget_id == "tenant:a:day"
    assert (over.spent, over.limit, over.cost) == (Decimal("0.6"), Decimal(1), Decimal("0.6"))
    assert 0 < over.wait_s <= 11.5 * 3600  # until midnight UTC
    assert over.explain() == ("budget tenant:a:day: spent $0.6000 of $1.00, and this call "
                              "may cost up to $0.6000")
    rig.book.set(budget.model_copy(update={"on_exceed": b.OnExceed.WAIT}))
    assert not rig.admit(rig.charge("0.60")).fail
    # another tenant is not covered; a raise counts for the very next call
    assert rig.ledger.charge("b", "q", MODEL, Decimal("0.60")) is None
    rig.book.set(budget.model_copy(update={"limit_usd": Decimal("2")}))
    assert isinstance(rig.admit(rig.charge("0.60")), Grant)


def test_soft_budgets_never_block_but_count(client: redis.Redis, db: Database) -> None:
    soft = b.Budget(scope=b.Scope.GLOBAL, period=b.Period.HOUR, limit_usd=Decimal("0.1"),
                    mode=b.Mode.SOFT, alert_share=0.8)
    rig = Rig(client, db, [soft])
    crossed = []
    for _ in range(3):
        charge = rig.charge("0.10")
        assert isinstance(rig.admit(charge), Grant)
        crossed.append(rig.ledger.settle(charge, Decimal("0.05")))
    assert rig.standing(soft) == (Decimal("0.15"), Decimal(0))
    # its alert line ($0.08) is crossed by the second call, and only then
    assert crossed == [[], [soft], []]


def test_reservations_of_a_dead_worker_come_back(client: redis.Redis, db: Database) -> None:
    budget = hard("1.00")
    rig = Rig(client, db, [budget], reservation_ttl_s=30)
    assert isinstance(rig.admit(rig.charge("0.90")), Grant)  # never settled
    assert isinstance(rig.admit(rig.charge("0.50")), Wait)
    rig.clock.t += 31
    assert isinstance(rig.admit(rig.charge("0.50")), Grant)
    assert rig.standing(budget) == (Decimal(0), Decimal("0.5"))


@pytest.mark.parametrize("limited", [False, True])
def test_300_concurrent_calls_never_cross_a_hard_budget(client: redis.Redis, db: Database,
                                                        limited: bool) -> None:
    """Every grant reserves its worst case atomically: whatever the interleaving, what is
    granted fits the limit; the settled spend (actual <= worst) does too."""
    budgets = [hard("1.00"), hard("0.70", b.Scope.GLOBAL)]
    rig = Rig(client, db, budgets, limits=ModelLimits(rpm=100_000) if limited else None)
    seeding = rig.charge("0.01")
    assert isinstance(rig.admit(seeding), Grant)  # seeds both periods first
    rig.ledger.settle(seeding, Decimal(0))
    granted: list[Charge] = []
    lock = threading.Lock()
    start = threading.Barrier(300, timeout=60)
    charges = [rig.charge(f"0.0{1 + i % 9}") for i in range(300)]

    def one(i: int) -> None:
        charge = charges[i]
        start.wait()
        got = rig.acquire(charge)
        if isinstance(got, Grant):
            with lock:
                granted.append(charge)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reserved = sum(c.cost for c in granted)
    # the global $0.70 binds: filled to within the largest ask ($0.09), never past it
    assert to_nano(Decimal("0.61")) <= reserved <= to_nano(Decimal("0.70"))
    for c in granted:
        rig.ledger.settle(c, from_nano(c.cost) / 2)
    spent, held = rig.standing(budgets[1])
    assert held == 0 and spent is not None and spent <= Decimal("0.70")


def test_the_script_decides_as_its_twin(client: redis.Redis, db: Database) -> None:
    """Random asks and settlements on three budgets (one soft, one that fails): the script's
    answer and the standings after each step equal farm.costs.budgets' pure ones."""
    rng = random.Random(11)
    budgets = [hard("0.50"), hard("0.80", b.Scope.QUEUE, "q", b.OnExceed.FAIL),
               b.Budget(scope=b.Scope.MODEL, name=MODEL, period=b.Period.MONTH,
                        limit_usd=Decimal("0.2"), mode=b.Mode.SOFT, alert_share=0.5)]
    rig = Rig(client, db, budgets)
    order = sorted(budgets, key=lambda x: x.id)
    twin = [b.Standing(to_nano(x.limit_usd), x.mode is b.Mode.HARD,
                       x.on_exceed is b.OnExceed.FAIL, seeded=False) for x in order]
    open_calls: list[Charge] = []
    for _ in range(200):
        if open_calls and rng.random() < 0.45:
            charge = open_calls.pop(rng.randrange(len(open_calls)))
            actual = rng.randrange(0, charge.cost + 1)
            rig.ledger.settle(charge, from_nano(actual))
            twin = [b.settle(s, charge.cost, actual, held=True) for s in twin]
        else:
            charge = rig.charge(f"0.{rng.randrange(1, 30):02d}")
            got = rig.acquire(charge)
            expected = b.decide(twin, charge.cost)
            if isinstance(expected, b.Seed):
                assert got == expected
                rig.ledger.seed(charge, got.index)  # empty database: spent 0
                twin[got.index] = b.Standing(twin[got.index].limit, twin[got.index].hard,
                                             twin[got.index].fail)
                continue
            if isinstance(expected, b.Reserve):
                assert isinstance(got, Grant)
                open_calls.append(charge)
                twin = [b.Standing(s.limit, s.hard, s.fail, True, s.spent,
                                   s.reserved + charge.cost) for s in twin]
            elif isinstance(expected, b.Busy):
                assert isinstance(got, Wait) and order[expected.index].id in got.reason
            else:
                assert isinstance(got, OverBudget)
                assert (got.budget_id, got.fail) == (order[expected.index].id, expected.fail)
        for budget, s in zip(order, twin, strict=True):
            spent, reserved = rig.standing(budget)
            assert (spent, reserved) == ((from_nano(s.spent) if s.seeded else None),
                                         from_nano(s.reserved))


def test_the_cost_breaker_opens_holds_and_closes_as_its_twin(client: redis.Redis,
                                                             db: Database) -> None:
    rig = Rig(client, db, [], breaker_usd_per_min=Decimal("1.00"), breaker_window_s=60,
              breaker_close_share=0.5)
    window, is_open, opened = sr.SpendWindow(), False, 0
    for step in range(240):  # four minutes, a call a second, $0.02 each (20 % more)
        rig.clock.t += 1.0
        charge = rig.charge("0.05")
        got = rig.admit(charge)
        now = rig.clock.t
        window = sr.roll(window, now, 60)
        verdict = sr.check(sr.per_minute(window, now, 60), to_nano(Decimal(1)), 0.5, is_open)
        is_open = verdict.open
        assert isinstance(got, Grant) == verdict.admit, step
        if isinstance(got, Wait):
            assert got.reason == "cost breaker all open" and got.opened == verdict.changed
            opened += got.opened
        else:
            rig.ledger.settle(charge, Decimal("0.02"))
            window = sr.add(window, now, 60, to_nano(Decimal("0.02")))
    assert opened >= 2  # it opened, closed as the rate fell, and opened again
