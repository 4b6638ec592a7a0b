"""The breaker and the limiter paired in one script each way (farm.capacity.combined), in real
Redis: the same answers and the same Redis state as their separate calls, step for step, and
one round trip per step of a job's admission and end."""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from farm.capacity import combined
from farm.capacity.admission import AdmissionConfig, Gate, Go
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import Admission, BreakerConfig, BreakerState
from farm.capacity.combined import Paired, chain
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.limiter import Limiter
from farm.capacity.limits import Grant, Wait
from farm.capacity.ports import Pair, Separate
from farm.costs import budgets as b
from farm.costs.ledger import Ledger, LedgerConfig, to_nano
from farm.jobs import JobRequest, Priority, Usage
from farm.provider.errors import ErrorKind
from farm.store.jobs import StartedJob

MODEL, FREE = "m", "free"  # FREE has no limits at all: the acquire's code 2
T0 = float(int(time.time()))  # near Redis's own: the budgets' totals expire at a time
BREAKER = BreakerConfig(consecutive_failures=2, cooldown_s=10.0, max_cooldown_s=40.0,
                        probe_ttl_s=30.0)
LIMITS = LimiterConfig(models={MODEL: ModelLimits(rpm=3, itpm=10_000, otpm=10_000)},
                       burst_s=60, discovery_slots=0, grant_ttl_s=30)
BUDGET = b.Budget(scope=b.Scope.TENANT, name="a", period=b.Period.DAY, limit_usd=Decimal(1))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Ids:
    """uuid4 for the limiter and the ledger: the same ids on both sides of a step."""

    def __init__(self) -> None:
        self.n = 0

    def uuid4(self) -> SimpleNamespace:
        self.n += 1
        return SimpleNamespace(hex=f"{self.n:032x}")


@dataclass
class Side:
    root: str
    limiter: Limiter
    breaker: Breaker
    ledger: Ledger
    pair: Pair


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> Ids:
    stub = Ids()
    monkeypatch.setattr("farm.capacity.limiter.uuid", stub)
    monkeypatch.setattr("farm.costs.ledger.uuid", stub)
    return stub


def sides(client: redis.Redis, clock: Clock, *, ledger: LedgerConfig | None = None
          ) -> tuple[Side, Side]:
    """The separate calls and the paired ones, each under its own prefix, on one clock."""
    out = []
    for paired in (False, True):
        root = f"test:pair:{uuid.uuid4().hex[:8]}"
        lim = Limiter(client, LIMITS, f"{root}:lim", clock=clock)
        brk = Breaker(client, BREAKER, f"{root}:brk", clock=clock)
        led = Ledger(client, None, ledger or LedgerConfig(), lambda: [BUDGET],
                     prefix=f"{root}:bud", now=lambda: datetime.fromtimestamp(clock(), UTC),
                     clock=clock)
        out.append(Side(root, lim, brk, led, Paired(lim, brk) if paired else Separate(lim, brk)))
    return out[0], out[1]


def dump(client: redis.Redis, root: str, under: str = "") -> dict[str, Any]:
    """Every key under ``root`` (and ``under`` below it), its value and whether it expires;
    the root is left out of the names so that two sides compare."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(f"{root}:{under}*"):
        key = raw.decode()
        kind = client.type(key).decode()
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(client.smembers(key))
        else:
            value = client.get(key)
        out[key.removeprefix(root)] = (kind, value, client.ttl(key) > 0)
    return out


def plain(answer: Any) -> Any:
    """An answer with its charge left out (its keys name the side's prefix)."""
    if isinstance(answer, tuple):
        return tuple(plain(x) for x in answer)
    if dataclasses.is_dataclass(answer) and hasattr(answer, "charge"):
        return dataclasses.replace(answer, charge=None)  # type: ignore[type-var]
    return answer


class Lockstep:
    """Runs each step on both sides with the same ids, and checks that they agree."""

    def __init__(self, client: redis.Redis, ids: Ids, pair: tuple[Side, Side]) -> None:
        self.client, self.ids, self.sides = client, ids, pair

    def __call__(self, step: Callable[[Side, int], Any]) -> list[Any]:
        start, results = self.ids.n, []
        for i, side in enumerate(self.sides):
            self.ids.n = start
            results.append(step(side, i))
        separate, paired = results
        assert plain(paired) == plain(separate)
        assert self.state(1) == self.state(0)
        return results

    def state(self, i: int, under: str = "") -> dict[str, Any]:
        return dump(self.client, self.sides[i].root, under)


def admit(model: str = MODEL, usd: str | None = None) -> Callable[[Side, int], Any]:
    def step(side: Side, _: int) -> Any:
        charge = None if usd is None else side.ledger.charge("a", "q", model, Decimal(usd))
        return side.pair.admit(model, input_tokens=100, output_tokens=50,
                               priority=Priority.NORMAL, tenant="a", charge=charge)
    return step


def finish(grants: list[Any], success: bool | None, probe: bool = False,
           used: int | None = 80) -> Callable[[Side, int], Any]:
    def step(side: Side, i: int) -> Any:
        side.pair.finish(grants[i].model, grants[i], input_tokens=used, output_tokens=used,
                         success=success, probe=probe)
    return step


def grants(results: list[Any]) -> list[Grant]:
    out = [answer for _, answer in results]
    assert all(isinstance(g, Grant) for g in out), out
    return out


def test_the_paired_scripts_do_what_the_separate_calls_do(client: redis.Redis,
                                                           ids: Ids) -> None:
    clock = Clock()
    step = Lockstep(client, ids, sides(client, clock))
    # closed: allowed and granted; released with usage, recorded as a success
    first = step(admit())
    assert first[1][0].admission is Admission.ALLOW
    step(finish(grants(first), success=True))
    # the rpm bucket runs dry: a Wait
    second = grants(step(admit()))
    wait = step(admit())[1][1]
    assert isinstance(wait, Wait) and wait.reason == "rpm"
    # two failures open the breaker (a second release of the same grant changes nothing)
    step(finish(second, success=False))
    step(finish(second, success=False))
    assert step.sides[1].breaker.value(MODEL)[0].state is BreakerState.OPEN
    # open: rejected, the limiter not asked (its keys unchanged)
    limiter_keys = step.state(1, "lim")
    decision, answer = step(admit())[1]
    assert decision.admission is Admission.REJECT and answer is None
    assert decision.retry_in_s == pytest.approx(BREAKER.cooldown_s)
    assert step.state(1, "lim") == limiter_keys
    # after the cooldown, half-open: one probe, granted; the next caller is rejected
    clock.now += 60
    probe = step(admit())
    assert probe[1][0].admission is Admission.PROBE
    limiter_keys = step.state(1, "lim")
    decision, answer = step(admit())[1]
    assert decision.admission is Admission.REJECT and answer is None  # the probe is out
    assert step.state(1, "lim") == limiter_keys
    # the probe's failure opens the circuit again (for twice as long), its success closes it
    step(finish(grants(probe), success=False, probe=True))
    assert step.sides[1].breaker.value(MODEL)[0].reopens == 1
    clock.now += 2 * BREAKER.cooldown_s + 1
    probe = step(admit())
    assert probe[1][0].admission is Admission.PROBE
    step(finish(grants(probe), success=True, probe=True))
    assert step.sides[1].breaker.value(MODEL)[0].state is BreakerState.CLOSED
    # an outcome that is not the breaker's business: the release alone
    clock.now += 60
    step(finish(grants(step(admit())), success=None))
    # no limits at all: a grant with nothing to release; the record alone
    free = grants(step(admit(FREE)))
    assert free[1].grant_id == ""
    step(finish(free, success=False))
    # a budget's period not counted yet: Seed; seeded, a grant that reserves the call's cost
    client.hset(step.sides[0].ledger.def_key(BUDGET.id), mapping={
        "limit": str(to_nano(BUDGET.limit_usd)), "mode": "hard", "on_exceed": "wait"})
    client.hset(step.sides[1].ledger.def_key(BUDGET.id), mapping={
        "limit": str(to_nano(BUDGET.limit_usd)), "mode": "hard", "on_exceed": "wait"})
    clock.now += 60
    assert step(admit(usd="0.40"))[1][1] == b.Seed(0)
    step(lambda side, _: side.ledger.seed(side.ledger.charge("a", "q", MODEL, Decimal(1)), 0))
    budgeted = grants(step(admit(usd="0.40")))
    assert budgeted[1].charge is not None
    over = step(admit(usd="0.70"))[1][1]  # 0.40 reserved + 0.70 > 1.00
    assert isinstance(over, Wait) and "in-flight reservations" in over.reason
    step(finish(budgeted, success=True))


def test_a_cost_breaker_opened_in_the_paired_script(client: redis.Redis, ids: Ids) -> None:
    clock = Clock()
    step = Lockstep(client, ids, sides(
        client, clock, ledger=LedgerConfig(breaker_usd_per_min=Decimal("0.10"))))
    spent = grants(step(admit(usd="0.01")))
    step(lambda side, i: side.ledger.settle(spent[i].charge, Decimal("1.00")))  # type: ignore
    opened = step(admit(usd="0.01"))[1][1]
    assert isinstance(opened, Wait) and opened.opened and opened.reason.startswith(
        "cost breaker")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_steps_agree(client: redis.Redis, ids: Ids, seed: int) -> None:
    clock, rng = Clock(), random.Random(seed)
    step = Lockstep(client, ids, sides(client, clock))
    held: list[tuple[list[Grant], bool]] = []  # both sides' grants, and whether a probe
    for _ in range(150):
        clock.now += rng.choice([0.0, 0.5, 2.0, 6.0, 15.0, 45.0])
        if held and rng.random() < 0.5:
            pair, probe = held.pop(rng.randrange(len(held)))
            outcome = rng.choice([True, False, False, None])
            step(finish(pair, outcome, probe, used=rng.choice([None, 0, 40, 400])))
            continue
        results = step(admit(rng.choice([MODEL, MODEL, FREE])))
        decision, answer = results[1]
        if isinstance(answer, Grant):
            held.append(([a for _, a in results], decision.admission is Admission.PROBE))


def test_the_glue_hands_each_script_its_own_keys_and_args(client: redis.Redis) -> None:
    echo = "return {#KEYS, #ARGV, KEYS[1] or '', ARGV[#ARGV] or ''}"
    both = client.register_script(chain(echo, echo, skip="reply[4] == 'stop'"))
    assert both(keys=["k1", "k2", "k3"], args=[1, 2, "a", "go", "b", "c", "d"]) == [
        [1, 2, b"k1", b"go"], [2, 3, b"k2", b"d"]]
    assert both(keys=["k1"], args=[1, 1, "stop"]) == [[1, 1, b"k1", b"stop"]]
    assert both(keys=[], args=[0, 0]) == [[0, 0, b"", b""], [0, 0, b"", b""]]


def test_the_pair_needs_one_client(client: redis.Redis, broker_url: str) -> None:
    other = redis.Redis.from_url(broker_url)
    try:
        with pytest.raises(ValueError, match="one Redis client"):
            Paired(Limiter(client, LIMITS), Breaker(other, BREAKER))
    finally:
        other.close()
    assert combined.ADMIT.count("local function") > 2  # the scripts are wrapped, not edited


class Counting(redis.Redis):
    """A client that counts the commands it sends."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


def job() -> StartedJob:
    return StartedJob(uuid.uuid4(), JobRequest(prompt="Analyze this", tenant="a"), "q", MODEL,
                      1, created_at=datetime.now(UTC))


@pytest.mark.parametrize(("paired", "trips"), [(True, 2), (False, 4)])
def test_a_job_is_two_round_trips(broker_url: str, paired: bool, trips: int) -> None:
    client = Counting.from_url(broker_url)
    client.sent = []
    try:
        root = f"test:pair:{uuid.uuid4().hex[:8]}"
        lim = Limiter(client, LimiterConfig(models={MODEL: ModelLimits(rpm=1_000)},
                                            discovery_slots=0), f"{root}:lim")
        brk = Breaker(client, BreakerConfig(), f"{root}:brk")
        gate = Gate(lim, brk, AdmissionConfig(), pair=Paired(lim, brk) if paired else None)
        go = gate.admit(job())  # loads the scripts, reads the paused queues, tells the answer
        assert isinstance(go, Go)
        gate.done(go, Usage(input_tokens=10, output_tokens=10), {})

        def trips_of(fn: Callable[[], Any]) -> list[str]:
            client.sent = []
            fn()
            # the paused queues are polled at most once a second, not per job
            return [c for c in client.sent if c != "SMEMBERS"]

        go = gate.admit(job())
        assert isinstance(go, Go)
        done = trips_of(lambda: gate.done(go, Usage(input_tokens=10, output_tokens=10), {}))
        assert len(trips_of(lambda: gate.admit(job()))) + len(done) == trips
        assert all(c == "EVALSHA" for c in done)
        again = gate.admit(job())
        assert isinstance(again, Go)
        # a failure the breaker counts: the release and the record, one trip when paired
        failed = trips_of(lambda: gate.failed(again, ErrorKind.OVERLOADED, retry_after_s=None,
                                              ratelimit={}))
        assert failed == ["EVALSHA"] * (trips // 2)
    finally:
        client.close()
