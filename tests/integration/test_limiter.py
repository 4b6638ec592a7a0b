"""The limiter against a real Redis: the Lua script agrees with its Python twin, one round
trip per call, and many processes together stay inside the limits and share them fairly."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis

from farm.capacity import limits
from farm.capacity.config import LimiterConfig, ModelLimits
from farm.capacity.fairness import over_share
from farm.capacity.headers import parse_headers
from farm.capacity.limiter import Grant, Limiter, Wait
from farm.capacity.limits import ModelState
from farm.jobs import Priority
from tests_support import assert_same_state, random_headers, throttle_both

TENANTS = ("acme", "beta", "cyan")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counting(redis.Redis):
    """A client that counts the commands it sends (a pipeline is one round trip)."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


@pytest.fixture
def prefix() -> str:
    return f"test:lim:{uuid.uuid4().hex[:8]}"


def approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_script_and_python_twin_agree_step_by_step(client: redis.Redis, prefix: str,
                                                    seed: int) -> None:
    config = LimiterConfig(
        models={"m": ModelLimits(rpm=20, itpm=20_000, otpm=12_000, max_concurrency=5),
                "c": ModelLimits(max_concurrency=3), "r": ModelLimits(rpm=3)},
        tenant_window_s=20, grant_ttl_s=30, max_wait_s=15)
    clock, rng = Clock(), random.Random(seed)
    lim = Limiter(client, config, prefix, clock=clock)
    states = {m: ModelState() for m in ("m", "c", "r", "seen", "free", "idle")}
    held: list[Grant] = []
    seen: Counter[str] = Counter()
    for _ in range(900):
        clock.now += rng.choice([0.0, 0.0, 0.05, 0.1, 0.3, 1.0, 2.5, 7.0])
        now, model = clock.now, rng.choice(["m", "m", "m", "c", "r", "r", "seen", "free"])
        op = rng.choices(["acquire", "release", "observe", "pause", "throttle"],
                         [60, 25, 8, 3, 4])[0]
        if op == "release" and held:
            grant = held.pop(rng.randrange(len(held)))
            model = grant.model
            used: dict[str, int | None] = {
                "input_tokens": rng.choice([None, rng.randint(0, 3000)]),
                "output_tokens": rng.choice([None, rng.randint(0, grant.output_tokens)])}
            lim.release(grant, **used)
            _, states[model] = limits.settle(config, states[model], now, grant, **used)
            seen["release"] += 1
        elif op == "observe":
            # "free": an answer without rate-limit headers (it ends the model's discovery)
            headers = {} if model == "free" else random_headers(rng, now=now)
            lim.observe(model, headers)
            parsed = parse_headers(headers, now)
            states[model] = limits.observe(config, model, states[model], now, parsed)
            seen["short burst"] += (parsed.burst_s or 60) < config.burst_s
        elif op == "pause":
            secs = rng.choice([0.5, 2.0, 6.0])
            lim.pause(model, secs)
            states[model] = limits.pause(config, states[model], now, secs)
        elif op == "throttle":
            percent = rng.choice([None, 100, 50, 80, 25.5, 1])
            model = rng.choice([model, "free", "idle"])  # idle: no limits, no calls
            seen[throttle_both(lim, config, states, model, now, percent)] += 1
        else:
            ask: dict[str, Any] = {
                "input_tokens": rng.randint(0, 3000), "output_tokens": rng.choice(
                    [100, 1000, 4000, 9000]), "priority": rng.choice(list(Priority)),
                "tenant": rng.choice(TENANTS), "waited_s": rng.choice([0.0, 0.0, 0.0, 20.0])}
            before, got = states[model], lim.acquire(model, **ask)
            if over_share(config, before.starved, before.usage, now, ask["tenant"]):
                seen["over share"] += 1
            gid = got.grant_id if isinstance(got, Grant) else "none"
            want, states[model] = limits.acquire(config, model, states[model], now,
                                                grant_id=gid, **ask)
            if isinstance(want, Wait):
                assert isinstance(got, Wait) and got.reason == want.reason
                assert got.wait_s == approx(want.wait_s)
                seen[want.reason] += 1
            else:
                assert isinstance(got, Grant) and got == want
                held.append(got)
                seen["grant"] += 1
                seen["scheduled"] += got.delay_s > 0
                seen["discovery"] += model in ("seen", "free") and not before.answered
        got_state, _ = lim.read_state(model, TENANTS)
        assert_same_state(got_state, states[model], now=now)
    # the scenario really went through the interesting branches
    assert seen["grant"] > 50 and seen["release"] > 30
    assert {"rpm", "concurrency", "tenant-concurrency", "paused (429)", "over share",
            "throttled by rate", "nothing to throttle", "short burst", "scheduled",
            "discovery"} <= set(seen), seen


def test_acquire_and_release_are_one_round_trip(broker_url: str, prefix: str) -> None:
    client = Counting.from_url(broker_url)
    client.sent = []
    config = LimiterConfig(models={"m": ModelLimits(rpm=100, itpm=10_000, max_concurrency=5)},
                           discovery_slots=0)  # the unknown model is free from its first call
    lim = Limiter(client, config, prefix)
    try:
        warm = lim.acquire("m", input_tokens=10, output_tokens=10, priority=Priority.HIGH,
                           tenant="t")
        assert isinstance(warm, Grant)
        lim.release(warm, input_tokens=5, output_tokens=5)  # loads the scripts once
        client.sent.clear()
        grant = lim.acquire("m", input_tokens=10, output_tokens=10, priority=Priority.LOW,
                            tenant="t")
        assert isinstance(grant, Grant)
        lim.release(grant, input_tokens=12, output_tokens=3)
        free = lim.acquire("unknown-model", input_tokens=10, output_tokens=10,
                           priority=Priority.LOW, tenant="t")
        assert isinstance(free, Grant) and free.grant_id == ""
        lim.release(free)  # nothing was charged: no round trip at all
        assert client.sent == ["EVALSHA"] * 3
        # a model without limits leaves only its rate behind, which soon expires
        assert client.keys(f"{prefix}:m:unknown-model:*") == [
            f"{prefix}:m:unknown-model:rate".encode()]
        assert 0 < client.ttl(f"{prefix}:m:unknown-model:rate") <= 5 * config.tenant_window_s
    finally:
        client.close()


def test_idle_state_expires_and_operator_state_stays(client: redis.Redis, prefix: str) -> None:
    config = LimiterConfig(models={"m": ModelLimits(rpm=100, max_concurrency=5)})
    lim = Limiter(client, config, prefix)
    assert isinstance(lim.acquire("m", input_tokens=1, output_tokens=1,
                                  priority=Priority.NORMAL, tenant="t"), Grant)
    lim.observe("m", {"anthropic-ratelimit-requests-limit": "50"})
    lim.pause("m", 3)
    lim.throttle("m", 50)
    lim.pause_queue("batch")
    keys = {k.decode() for k in client.keys(f"{prefix}:*")}
    lasting = {f"{prefix}:m:m:throttle", f"{prefix}:queues:paused"}
    assert lasting <= keys
    for key in keys - lasting:
        assert 0 < client.ttl(key) <= 7 * 86_400, key


def test_pause_throttle_observe_and_queues_are_shared(client: redis.Redis, prefix: str) -> None:
    config = LimiterConfig(models={"m": ModelLimits(rpm=600, otpm=100_000)})
    one, two = Limiter(client, config, prefix), Limiter(client, config, prefix)
    ask: dict[str, Any] = {"input_tokens": 10, "output_tokens": 1000,
                           "priority": Priority.HIGH, "tenant": "t"}
    one.pause("m", 30)
    one.pause("m", 5)  # a shorter pause never shortens the one in force
    wait = two.acquire("m", **ask)
    assert isinstance(wait, Wait) and wait.reason == "paused (429)" and 25 < wait.wait_s <= 30
    free = two.acquire("no-limits", **ask)  # the pause is per model
    assert isinstance(free, Grant)
    with pytest.raises(ValueError, match="between 1 and 100"):
        one.throttle("m", 0)
    with pytest.raises(ValueError, match="between 1 and 100"):
        one.throttle("m", 101)
    one.throttle("m", 10)
    snap = two.snapshot("m")
    assert snap["throttle_percent"] == 10.0
    assert snap["effective"]["rpm"] == pytest.approx(600 * 0.1 * 0.98)
    assert snap["paused_for_s"] > 25
    one.throttle("m", None)
    one.observe("m", {"Anthropic-RateLimit-Requests-Limit": "50",
                      "anthropic-ratelimit-output-tokens-limit": "80000",
                      "anthropic-ratelimit-output-tokens-remaining": "3000"})
    snap = two.snapshot("m")
    assert snap["observed"] == {"rpm": 50, "otpm": 80_000}
    assert snap["effective"]["rpm"] == pytest.approx(49.0)
    assert snap["levels"]["otpm"] == pytest.approx(3000 * 0.98, abs=50)  # refilled a little
    assert snap["throttle_percent"] is None
    assert two.models() == ["m", "no-limits"] or two.models() == ["m"]
    assert "m" in two.models()
    one.pause_queue("haiku-simple")
    one.pause_queue("batch")
    two.resume_queue("batch")
    assert two.paused_queues() == {"haiku-simple"}
    with pytest.raises(ValueError, match="not a valid Priority"):
        one.acquire("x", input_tokens=1, output_tokens=1, priority="urgent",  # type: ignore[arg-type]
                    tenant="t")
    with pytest.raises(ValueError, match=">= 0"):
        one.acquire("x", input_tokens=-1, output_tokens=1, priority=Priority.LOW, tenant="t")


def test_release_of_unknown_or_repeated_grant_is_harmless(client: redis.Redis,
                                                           prefix: str) -> None:
    config = LimiterConfig(models={"m": ModelLimits(otpm=10_000, max_concurrency=1)},
                           burst_s=60, discovery_slots=0)
    clock = Clock()
    lim = Limiter(client, config, prefix, clock=clock)
    ask: dict[str, Any] = {"input_tokens": 0, "output_tokens": 4000, "priority": Priority.HIGH,
                           "tenant": "t"}
    grant = lim.acquire("m", **ask)
    assert isinstance(grant, Grant)
    assert lim.acquire("m", **ask) == Wait(0.25, "concurrency")
    lim.release(grant, output_tokens=0)
    lim.release(grant, output_tokens=0)  # a second refund would overfill the bucket
    lim.release(Grant("m", "nope", "t", 0, 5000), output_tokens=0)
    lim.release(Grant("never-seen", "nope", "t", 0, 5000), output_tokens=0)
    state, _ = lim.read_state("m")
    assert state.levels["otpm"] == pytest.approx(9800.0) and not state.inflight


def test_a_small_tenant_gets_its_share_next_to_a_big_one(client: redis.Redis,
                                                         prefix: str) -> None:
    """A asks every 0.1 s for 100 s, B gets a job every 10 s, under 60 rpm (a paced bucket
    of 5 s). B, refused once, is starved; A, with far more recent grants, then yields (it
    takes only a full bucket's token), so B is served when the calls A had scheduled ahead
    are out: at its second try, within max_delay_s of asking."""
    config = LimiterConfig(models={"m": ModelLimits(rpm=60)})
    clock = Clock()
    lim = Limiter(client, config, prefix, clock=clock)
    granted: Counter[str] = Counter()
    b_asks, b_since, b_next, b_waits = 0, None, 0.0, []
    for i in range(1000):
        clock.now += 0.1
        if i % 100 == 50:
            b_since = b_next = clock.now  # B's job arrives
        for tenant in ("A", "B") if b_since is not None and clock.now >= b_next else ("A",):
            got = lim.acquire("m", input_tokens=100, output_tokens=100,
                              priority=Priority.NORMAL, tenant=tenant)
            if tenant == "B":  # B comes back when it is told to
                b_asks += 1
                b_next = clock.now + (got.wait_s if isinstance(got, Wait) else 0.0)
            if isinstance(got, Grant):
                granted[tenant] += 1
                if tenant == "B":
                    assert b_since is not None
                    b_waits.append(clock.now + got.delay_s - b_since)
                    b_since = None
                lim.release(got)
    assert granted["B"] == 10 and b_asks <= 20
    # the calls A had scheduled ahead, then B's own: within max_delay_s and one interval
    assert max(b_waits) <= config.max_delay_s + 1 / 0.98 + 0.1, b_waits
    # the bucket (4.9) and 100 s of its rate (98), scheduled up to 2 s ahead, less B's 10
    assert 0.98 * 100 - 4.9 - 10 <= granted["A"] <= 4.9 + 0.98 * 102 - 10


def test_slots_are_shared_between_tenants(client: redis.Redis, prefix: str) -> None:
    config = LimiterConfig(models={"m": ModelLimits(max_concurrency=4)})
    lim = Limiter(client, config, prefix, clock=Clock())
    ask: dict[str, Any] = {"input_tokens": 1, "output_tokens": 1, "priority": Priority.HIGH}
    a = [lim.acquire("m", tenant="A", **ask) for _ in range(5)]
    assert [isinstance(g, Grant) for g in a] == [True] * 4 + [False]  # alone: all 4 slots
    assert lim.acquire("m", tenant="B", **ask) == Wait(0.25, "concurrency")
    assert isinstance(a[0], Grant)
    lim.release(a[0])
    # B is active now: A (3 held) may hold ceil(4/2) = 2, so the free slot is B's; A, with
    # all of the grants, is over its share and told to give its slot back
    assert lim.acquire("m", tenant="A", **ask) == Wait(0.25, "tenant-concurrency",
                                                       over_share=True)
    assert isinstance(lim.acquire("m", tenant="B", **ask), Grant)


WORKER = r"""
import json, random, sys, threading, time
import redis
from farm.jobs import Priority
from farm.capacity.limiter import Grant, Limiter
from farm.capacity.config import LimiterConfig

url, prefix, tenant, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = LimiterConfig.model_validate_json(sys.argv[5])
client = redis.Redis.from_url(url, max_connections=threads + 4)
lim = Limiter(client, config, prefix)
probe = client.register_script('''
local v = redis.call('INCR', KEYS[1])
redis.call('INCR', KEYS[3])
if v > tonumber(redis.call('GET', KEYS[2]) or 0) then redis.call('SET', KEYS[2], v) end
return v''')
keys = [prefix + ':probe:now', prefix + ':probe:max', prefix + ':probe:grants']
client.incr(prefix + ':ready')
while not client.exists(prefix + ':go'):
    time.sleep(0.01)
start, lock, stats = time.monotonic(), threading.Lock(), {}

def done():
    elapsed = time.monotonic() - start
    return elapsed > 30 or (elapsed > 3 and client.exists(prefix + ':saw-rpm'))

def run(seed):
    rng = random.Random(seed)
    while not done():
        got = lim.acquire('m', input_tokens=50, output_tokens=200, tenant=tenant,
                          priority=rng.choice(list(Priority)))
        key = 'grant' if isinstance(got, Grant) else got.reason
        with lock:
            stats[key] = stats.get(key, 0) + 1
        if isinstance(got, Grant):
            probe(keys=keys)
            time.sleep(0.002)
            client.decr(keys[0])
            lim.release(got, output_tokens=150)
        else:
            if got.reason == 'rpm':
                client.set(prefix + ':saw-rpm', 1)
            time.sleep(min(got.wait_s, 0.05))

workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(stats))
"""


@pytest.mark.parametrize("burst_s", [60.0, 5.0])
def test_many_processes_stay_inside_the_limits(client: redis.Redis, prefix: str,
                                               broker_url: str, burst_s: float) -> None:
    """4 processes x 20 threads on one model: grants never exceed the bucket (its size + rate
    * elapsed, + max_delay_s of the rate scheduled ahead) and calls in flight never exceed
    max_concurrency; with a minute's bucket and with a paced one."""
    config = LimiterConfig(models={"m": ModelLimits(rpm=600, max_concurrency=8)},
                           burst_s=burst_s, discovery_slots=0)  # no small start
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, broker_url, prefix, f"tenant{i}", "20",
                               config.model_dump_json()], stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    try:
        deadline = time.monotonic() + 120
        while int(client.get(f"{prefix}:ready") or 0) < 4:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        sec, usec = client.time()
        client.set(f"{prefix}:go", 1)
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        end_sec, end_usec = client.time()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    stats: Counter[str] = Counter()
    for out in outputs:
        stats.update(json.loads(out))
    elapsed = (end_sec - sec) + (end_usec - usec) / 1e6
    rate = 600 * 0.98 / 60
    size, ahead = rate * burst_s, rate * config.max_delay_s
    grants = int(client.get(f"{prefix}:probe:grants") or 0)
    peak = int(client.get(f"{prefix}:probe:max") or 0)
    print(f"\n4x20 threads, {elapsed:.1f} s: {grants} grants (bucket allows "
          f"{size + rate * elapsed + ahead:.0f}), peak in flight {peak}, {dict(stats)}")
    assert grants == stats["grant"]
    assert stats["rpm"] > 0  # the rpm bucket really was the binding limit
    assert 0.9 * (size + rate * elapsed) <= grants <= size + rate * elapsed + ahead + 1, (
        stats, elapsed)
    assert 1 <= peak <= 8
    assert client.zcard(f"{prefix}:m:m:inflight") == 0  # every slot was given back
