"""The breaker in real Redis, shared by several real processes; time comes from the clock
override, so nothing here waits for a cooldown. (Not named test_breaker.py: tests/unit has
one, and test modules here are imported by their base name.)"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from farm.capacity.breaker import Breaker, parse
from farm.capacity.circuit import (
    Admission,
    BreakerConfig,
    BreakerState,
    BreakerValue,
    Event,
    transition,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-haiku-4-5"
T0 = 1_700_000_000.0
WORKER = """
import json, sys
import redis
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import BreakerConfig
url, config, now, model, ops = sys.argv[1:6]
client = redis.Redis.from_url(url)
breaker = Breaker(client, BreakerConfig(**json.loads(config)), clock=lambda: float(now))
print("ready", flush=True)
sys.stdin.readline()  # everyone starts together
out = []
for op in json.loads(ops):
    if op == "allow":
        out.append(breaker.allow(model).admission.value)
    else:
        kind, _, probe = op.partition("-")
        out.append(breaker.record(model, success=kind == "success", probe=bool(probe)).value)
print(json.dumps(out), flush=True)
"""


def in_processes(url: str, config: BreakerConfig, now: float, *ops: list[str]
                 ) -> list[list[str]]:
    """Run each list of ops in its own process, all released at once; their results."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-c", WORKER, url, config.model_dump_json(), repr(now), MODEL,
         json.dumps(steps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for steps in ops]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            results.append(json.loads(out))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker_at(client: redis.Redis, config: BreakerConfig, clock: Clock) -> Breaker:
    return Breaker(client, config, clock=clock)


def test_failures_from_several_processes_open_it_for_all(broker_url: str,
                                                         client: redis.Redis) -> None:
    config = BreakerConfig()  # 5 in a row; no process sees more than 2 of its own
    in_processes(broker_url, config, T0, *[["failure", "failure"]] * 4)
    breaker = breaker_at(client, config, Clock(T0 + 1))
    decision = breaker.allow(MODEL)
    assert decision.admission is Admission.REJECT and decision.state is BreakerState.OPEN
    assert decision.retry_in_s == pytest.approx(14.0)
    assert in_processes(broker_url, config, T0 + 1, ["allow"], ["allow"]) == [["reject"]] * 2
    state = breaker.state(MODEL)
    assert state["state"] == "open" and state["opened_at"] == T0
    assert state["cooldown_remaining_s"] == pytest.approx(14.0)
    assert breaker.allow("claude-sonnet-5-5").admission is Admission.ALLOW  # per model


def test_failure_ratio_across_processes(broker_url: str, client: redis.Redis) -> None:
    config = BreakerConfig(consecutive_failures=1000, min_calls=20)
    results = [state for r in in_processes(broker_url, config, T0, *[["failure"] * 6] * 4)
               for state in r]
    # the 20th failure opened it (all failures: ratio 1); the 4 after it were ignored
    assert results.count("closed") == 19 and results.count("open") == 5
    assert breaker_at(client, config, Clock(T0)).state(MODEL)["state"] == "open"


def open_breaker(client: redis.Redis, config: BreakerConfig, at: float = T0) -> None:
    breaker = breaker_at(client, config, Clock(at))
    for _ in range(config.consecutive_failures):
        breaker.record(MODEL, success=False, probe=False)
    assert breaker.state(MODEL)["state"] == "open"


@pytest.mark.parametrize("probes", [1, 2])
def test_after_the_cooldown_exactly_probes_callers_get_probe(broker_url: str, client: redis.Redis,
                                                             probes: int) -> None:
    config = BreakerConfig(probes=probes)
    open_breaker(client, config)
    early = in_processes(broker_url, config, T0 + 14.9, *[["allow"] * 3] * 3)
    assert {a for r in early for a in r} == {"reject"}
    results = in_processes(broker_url, config, T0 + 15, *[["allow"] * 3] * 6)
    admissions = [a for r in results for a in r]
    assert admissions.count("probe") == probes and admissions.count("reject") == 18 - probes
    state = breaker_at(client, config, Clock(T0 + 16)).state(MODEL)
    assert state["state"] == "half_open" and state["probes_in_flight"] == probes


def test_a_probe_success_closes_it_for_everyone(broker_url: str, client: redis.Redis) -> None:
    config = BreakerConfig()
    open_breaker(client, config)
    [prober] = in_processes(broker_url, config, T0 + 20, ["allow", "success-probe"])
    assert prober == ["probe", "closed"]
    others = in_processes(broker_url, config, T0 + 21, ["allow"], ["allow"], ["allow"])
    assert others == [["allow"]] * 3
    state = breaker_at(client, config, Clock(T0 + 21)).state(MODEL)
    assert state["state"] == "closed" and state["failures_in_row"] == 0
    assert state["cooldown_s"] == 15


def test_a_probe_failure_reopens_with_the_cooldown_doubled(broker_url: str,
                                                           client: redis.Redis) -> None:
    config = BreakerConfig()
    open_breaker(client, config)
    [prober] = in_processes(broker_url, config, T0 + 15, ["allow", "failure-probe"])
    assert prober == ["probe", "open"]
    breaker = breaker_at(client, config, clock := Clock(T0 + 15 + 29))
    decision = breaker.allow(MODEL)
    assert decision.admission is Admission.REJECT and decision.retry_in_s == pytest.approx(1.0)
    assert breaker.state(MODEL)["cooldown_s"] == 30
    clock.now = T0 + 15 + 30
    assert breaker.allow(MODEL).admission is Admission.PROBE
    assert breaker.record(MODEL, success=False, probe=True) is BreakerState.OPEN
    assert breaker.state(MODEL)["cooldown_s"] == 60


def test_a_dead_probe_frees_its_slot(client: redis.Redis) -> None:
    config = BreakerConfig(probe_ttl_s=150)
    open_breaker(client, config)
    breaker = breaker_at(client, config, clock := Clock(T0 + 15))
    assert breaker.allow(MODEL).admission is Admission.PROBE  # and its holder dies
    clock.now += 149
    assert breaker.allow(MODEL).admission is Admission.REJECT
    clock.now += 1
    assert breaker.allow(MODEL).admission is Admission.PROBE


def test_reset_and_transition_logs(client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    config = BreakerConfig()
    breaker = breaker_at(client, config, clock := Clock())
    with caplog.at_level(logging.INFO, logger="farm.breaker"):
        for _ in range(5):
            breaker.record(MODEL, success=False, probe=False)
        clock.now += 15
        breaker.allow(MODEL)
        breaker.record(MODEL, success=True, probe=True)
        for _ in range(5):
            breaker.record(MODEL, success=False, probe=False)
        breaker.reset(MODEL)
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in logged] == [logging.WARNING, logging.INFO, logging.INFO,
                                              logging.WARNING, logging.INFO]
    assert "closed -> open" in logged[0][1] and "open -> half_open" in logged[1][1]
    assert "half_open -> closed" in logged[2][1] and "operator" in logged[4][1]
    assert breaker.allow(MODEL).admission is Admission.ALLOW
    assert client.exists(breaker.key(MODEL)) == 0


def test_redis_time_and_text_clients(broker_url: str) -> None:
    """Without the override the script uses Redis's clock; decode_responses is fine too."""
    config = BreakerConfig(cooldown_s=3600, max_cooldown_s=7200)
    with redis.Redis.from_url(broker_url, decode_responses=True) as text_client:
        breaker = Breaker(text_client, config, prefix="farm:test-breaker")
        for _ in range(5):
            breaker.record(MODEL, success=False, probe=False)
        decision = breaker.allow(MODEL)
        assert decision.admission is Admission.REJECT and 0 < decision.retry_in_s <= 3600
        state = breaker.state(MODEL)
        assert state["state"] == "open" and 0 < state["cooldown_remaining_s"] <= 3600
        assert text_client.ttl(breaker.key(MODEL)) > 7200


@pytest.mark.parametrize("seed", range(4))
def test_lua_and_transition_agree_step_by_step(client: redis.Redis, seed: int) -> None:
    """Random events through the pure function and the Lua script: same values, same
    decisions, after every step."""
    rng = random.Random(seed)
    config = BreakerConfig(consecutive_failures=4, window_s=3, failure_ratio=0.5, min_calls=6,
                           cooldown_s=1, max_cooldown_s=4, probes=2, probe_ttl_s=2)
    breaker = breaker_at(client, config, clock := Clock(T0 + rng.random()))
    value, seen = BreakerValue(), set()
    for _ in range(400):
        clock.now += rng.choice((0.0, 0.01, 0.3, 0.7, 1.3))
        event = rng.choices(list(Event), weights=(4, 3, 3))[0]
        probe = rng.random() < 0.5
        value, expected = transition(value, event, clock.now, config, probe=probe)
        if event is Event.ALLOW:
            assert breaker.allow(MODEL) == expected
            assert expected is not None
            seen.add(expected.admission)
        else:
            got = breaker.record(MODEL, success=event is Event.SUCCESS, probe=probe)
            assert got is value.state
        assert parse(client.hgetall(breaker.key(MODEL))) == value
        seen.add(value.state)
    assert seen == {*Admission, *BreakerState}
