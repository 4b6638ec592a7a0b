"""The Redis limiter and breaker and the in-memory ones (farm.capacity.memory) are the same
thing: one seeded random sequence of operations, run against both on one manual clock, gives
the same answers, the same state and the same operator view after every step. Grant ids
differ (each side makes its own): they are mapped, Redis's to memory's."""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis

from farm.capacity import fairness
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import Admission, BreakerConfig, BreakerState, Event
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.limiter import Limiter
from farm.capacity.limits import Grant, Wait
from farm.capacity.memory import ManualClock, MemoryBreaker, MemoryLimiter
from farm.jobs import Priority
from tests_support import assert_same_state, random_headers

TENANTS = ("acme", "beta", "cyan")
QUEUES = ("haiku-simple", "sonnet-complex", "batch")
CONFIG = LimiterConfig(
    models={"m": ModelLimits(rpm=20, itpm=20_000, otpm=40_000, max_concurrency=5),
            "c": ModelLimits(max_concurrency=3), "r": ModelLimits(rpm=3)},
    tenant_window_s=20, grant_ttl_s=30, max_wait_s=15)
MODELS = ("m", "m", "m", "c", "r", "r", "seen", "free")  # seen: limits only from headers
AnyLimiter = Limiter | MemoryLimiter


def approx(value: Any, abs: float = 1e-9) -> Any:
    return pytest.approx(value, rel=1e-9, abs=abs)


@dataclass(frozen=True)
class Op:
    """One call, the same for both limiters; ``pick`` chooses among the grants held."""

    name: str
    model: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    pick: float = 0.0


def random_op(rng: random.Random, now: float) -> Op:
    model = rng.choice(MODELS)
    name = rng.choices(["acquire", "release", "release-again", "observe", "pause", "throttle",
                        "queue", "invalid"], [55, 22, 3, 8, 3, 4, 2, 3])[0]
    if name in ("release", "release-again"):
        return Op(name, args={
            "input_tokens": rng.choice([None, rng.randint(0, 3000), -rng.randint(1, 500)]),
            "output_tokens": rng.choice([None, rng.randint(0, 4000), -rng.randint(1, 500)])},
            pick=rng.random())
    if name == "observe":
        return Op(name, model, {"headers": {} if model == "free" else random_headers(
            rng, otpm=60_000, now=now)})
    if name == "pause":
        return Op(name, model, {"seconds": rng.choice([0.5, 2.0, 6.0])})
    if name == "throttle":  # "slow": a model only an operator's throttle ever names
        return Op(name, rng.choice([model, "slow"]),
                  {"percent": rng.choice([None, 100, 50, 80, 25.5])})
    if name == "queue":
        return Op(name, rng.choice(QUEUES), {"pause": rng.random() < 0.6})
    if name == "invalid":
        bad = rng.choice([{"tenant": "a|b"}, {"tenant": ""}, {"input_tokens": -1},
                          {"priority": "urgent"}, {"percent": 0}, {"percent": 101},
                          {"seconds": -1.0}, {"seconds": math.inf}])
        return Op(name, model, bad)
    return Op("acquire", model, {
        "input_tokens": rng.randint(0, 3000), "output_tokens": rng.choice([100, 1000, 4000, 9000]),
        "priority": rng.choice(list(Priority)), "tenant": rng.choice(TENANTS),
        "waited_s": rng.choice([0.0, 0.0, 0.0, 20.0])})


class Side:
    """One limiter and the grants it gave: held (not released yet) and released."""

    def __init__(self, limiter: AnyLimiter) -> None:
        self.limiter, self.held, self.released = limiter, list[Grant](), list[Grant]()
        self.model = ""  # the model the last op was about (a release: its grant's)

    def run(self, op: Op) -> Grant | Wait | str | None:
        """The answer to ``op``: a Grant or Wait, a refusal's message, or None."""
        lim, self.model = self.limiter, "" if op.name == "queue" else op.model
        try:
            if op.name == "acquire":
                got = lim.acquire(op.model, **op.args)
                if isinstance(got, Grant):
                    self.held.append(got)
                return got
            if op.name == "release" and self.held:
                grant = self.held.pop(int(op.pick * len(self.held)))
                lim.release(grant, **op.args)
                self.released.append(grant)
                self.model = grant.model
            elif op.name == "release-again" and self.released:
                grant = self.released[int(op.pick * len(self.released))]
                lim.release(grant, **op.args)
                self.model = grant.model
            elif op.name == "observe":
                lim.observe(op.model, op.args["headers"])
            elif op.name == "pause":
                lim.pause(op.model, op.args["seconds"])
            elif op.name == "throttle":
                lim.throttle(op.model, op.args["percent"])
            elif op.name == "queue":
                (lim.pause_queue if op.args["pause"] else lim.resume_queue)(op.model)
            elif op.name == "invalid" and "percent" in op.args:
                lim.throttle(op.model, op.args["percent"])
            elif op.name == "invalid" and "seconds" in op.args:
                lim.pause(op.model, op.args["seconds"])
            elif op.name == "invalid":
                ask: dict[str, Any] = {"input_tokens": 1, "output_tokens": 1,
                                       "priority": Priority.LOW, "tenant": "acme", **op.args}
                lim.acquire(op.model, **ask)
        except ValueError as exc:
            return f"ValueError: {exc}"
        return None


def over_share(lim: MemoryLimiter, op: Op, now: float) -> bool:
    """Whether this ask's tenant is over its fair share (it is served a priority lower)."""
    state = lim.read_state(op.model)[0]
    return fairness.over_share(CONFIG, state.starved, state.usage, now, op.args["tenant"])


def assert_same_answer(got: Any, want: Any, ids: dict[str, str]) -> None:
    """``got`` from Redis, ``want`` from memory."""
    if isinstance(want, Wait):
        assert isinstance(got, Wait) and got.reason == want.reason, (got, want)
        assert got.wait_s == approx(want.wait_s)
    elif isinstance(want, Grant):
        assert isinstance(got, Grant), (got, want)
        assert replace(got, grant_id="", delay_s=0.0) == replace(want, grant_id="", delay_s=0.0)
        assert got.delay_s == approx(want.delay_s)
        assert bool(got.grant_id) == bool(want.grant_id)  # "": a model without limits
        if got.grant_id:
            assert got.grant_id not in ids
            ids[got.grant_id] = want.grant_id
    else:
        assert got == want


def assert_close(got: Any, want: Any, path: str = "") -> None:
    """Nested dicts equal, floats within rounding (usage is shown rounded to 3 places)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key, value in want.items():
            assert_close(got[key], value, f"{path}.{key}")
    elif isinstance(want, float):
        assert got == approx(want, abs=1e-3 if path.endswith(".usage") else 1e-9), path
    else:
        assert got == want, path


@pytest.mark.parametrize("seed", [1, 2, 6])
def test_limiters_agree_step_by_step(client: redis.Redis, seed: int) -> None:
    clock, rng = ManualClock(), random.Random(seed)
    counter = itertools.count()
    in_redis = Side(Limiter(client, CONFIG, f"test:parity:{uuid.uuid4().hex[:8]}", clock=clock))
    in_memory = Side(MemoryLimiter(CONFIG, clock=clock, new_id=lambda: f"mem{next(counter)}"))
    ids: dict[str, str] = {}
    seen: Counter[str] = Counter()
    for _ in range(600):
        clock.sleep(rng.choice([0.0, 0.0, 0.05, 0.1, 0.3, 1.0, 2.5, 7.0]))
        op = random_op(rng, clock())
        if op.name == "acquire" and over_share(in_memory.limiter, op, clock()):
            seen["over share"] += 1
        got, want = in_redis.run(op), in_memory.run(op)
        assert_same_answer(got, want, ids)
        if isinstance(want, Wait):
            seen[want.reason] += 1
        elif isinstance(want, Grant):
            seen["grant" if want.grant_id else "unlimited"] += 1
            seen["scheduled"] += want.delay_s > 0
        else:
            seen[op.name if want is None else "refused"] += 1
        model = in_memory.model
        assert in_redis.model == model
        if model:
            r_state, r_now = in_redis.limiter.read_state(model, TENANTS)
            m_state, m_now = in_memory.limiter.read_state(model, TENANTS)
            assert r_now == m_now == clock()
            assert_same_state(r_state, m_state, ids, now=clock())
            assert_close(in_redis.limiter.snapshot(model), in_memory.limiter.snapshot(model))
        assert in_redis.limiter.models() == in_memory.limiter.models()
        assert in_redis.limiter.paused_queues() == in_memory.limiter.paused_queues()
    # the sequence went through every kind of answer
    assert seen["grant"] > 50 and seen["release"] > 30 and seen["release-again"] > 0
    assert seen["unlimited"] > 0 and seen["scheduled"] > 0 and seen["refused"] > 0
    assert seen["queue"] > 0 and seen["observe"] > 0 and seen["throttle"] > 0
    assert {"rpm", "otpm", "concurrency", "tenant-concurrency", "paused (429)", "over share"
            } <= set(seen), seen


@pytest.mark.parametrize("seed", range(3))
def test_breakers_agree_step_by_step(client: redis.Redis, seed: int) -> None:
    config = BreakerConfig(consecutive_failures=4, window_s=3, failure_ratio=0.5, min_calls=6,
                           cooldown_s=1, max_cooldown_s=4, probes=2, probe_ttl_s=2)
    rng = random.Random(seed)
    clock = ManualClock(1_700_000_000.0 + rng.random())
    in_redis = Breaker(client, config, f"test:parity-brk:{uuid.uuid4().hex[:8]}", clock=clock)
    in_memory = MemoryBreaker(config, clock=clock)
    seen: set[Any] = set()
    for _ in range(400):
        clock.sleep(rng.choice((0.0, 0.01, 0.3, 0.7, 1.3)))
        model = rng.choice(("a", "a", "a", "b"))
        if rng.random() < 0.01:
            in_redis.reset(model)
            in_memory.reset(model)
            seen.add("reset")
        else:
            event = rng.choices(list(Event), weights=(4, 3, 3))[0]
            if event is Event.ALLOW:
                decision = in_memory.allow(model)
                assert in_redis.allow(model) == decision
                seen.add(decision.admission)
            else:
                result = {"success": event is Event.SUCCESS, "probe": rng.random() < 0.5}
                assert in_redis.record(model, **result) is in_memory.record(model, **result)
        for name in ("a", "b"):
            assert in_redis.value(name) == in_memory.value(name)
            assert in_redis.state(name) == in_memory.state(name)
        seen.add(in_memory.value(model)[0].state)
    assert seen == {*Admission, *BreakerState, "reset"}
