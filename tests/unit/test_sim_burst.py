"""The simulator's burst window (short-interval enforcement): bucket sizes, headers, oversized
costs, validation."""

from __future__ import annotations

import calendar
import time

import pytest
from click.testing import CliRunner

from farm.cli.main import main
from farm.sim import limits as sim_limits
from farm.sim import server
from farm.sim.server import SimConfig, SimState

REQS, TOKENS = "anthropic-ratelimit-requests-", "anthropic-ratelimit-input-tokens-"


def reset_at(value: str) -> int:
    return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))


def test_a_burst_bucket_holds_burst_s_of_the_limit_and_refills_per_minute() -> None:
    buckets = sim_limits.make_buckets({"requests": 300, "input-tokens": 60_000}, 0.0, 10.0)
    reqs, tokens = buckets["requests"], buckets["input-tokens"]
    assert (reqs.capacity, reqs.rate, reqs.level, reqs.limit) == (50, 5, 50, 300)
    assert (tokens.capacity, tokens.rate, tokens.limit) == (10_000, 1000, 60_000)
    reqs.level = 0
    assert reqs.wait_s(1, now=0.0) == pytest.approx(0.2)
    reqs.refill(4.0)
    assert reqs.level == pytest.approx(20)
    reqs.refill(100.0)
    assert reqs.level == 50  # never more than the burst
    full = sim_limits.make_buckets({"requests": 300}, 0.0)["requests"]
    assert (full.capacity, full.rate, full.limit) == (300, 5, 300)  # without: a full minute


def test_headers_show_the_per_minute_limit_and_when_the_burst_is_full() -> None:
    now = 1_000_000.0
    buckets = sim_limits.make_buckets({"requests": 300, "input-tokens": 60_000}, now, 10.0)
    buckets["requests"].level, buckets["input-tokens"].level = 20.0, 2_500.0
    headers = sim_limits.ratelimit_headers(buckets, now)
    assert headers[REQS + "limit"] == "300" and headers[TOKENS + "limit"] == "60000"
    assert headers[REQS + "remaining"] == "20" and headers[TOKENS + "remaining"] == "2000"
    left = int(headers[REQS + "remaining"]) + (reset_at(headers[REQS + "reset"]) - now) * 5
    assert left == pytest.approx(50, abs=5)  # remaining + refill until the reset = capacity
    assert reset_at(headers[TOKENS + "reset"]) - now == pytest.approx(7.5, abs=1)


def test_a_cost_above_the_burst_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    buckets = sim_limits.make_buckets({"requests": 300, "input-tokens": 60_000}, 0.0, 10.0)
    costs = {"requests": 1, "input-tokens": 20_000}  # twice the 10 s input-token bucket
    assert sim_limits.admission_wait(buckets, costs, 0.0)[0] == 0.0  # admitted: it is full
    for kind, bucket in buckets.items():
        bucket.level -= costs[kind]
    tokens = buckets["input-tokens"]
    assert tokens.level == -10_000
    headers = sim_limits.ratelimit_headers(buckets, 0.0)
    assert headers[TOKENS + "remaining"] == "0"
    assert reset_at(headers[TOKENS + "reset"]) == 20  # the debt, then the burst: 20 s
    assert sim_limits.admission_wait(buckets, {"requests": 1, "input-tokens": 1}, 0.0) == (
        pytest.approx(10.001), "input-tokens")  # the debt is repaid before the next one
    assert sim_limits.admission_wait(buckets, costs, 0.0)[0] == pytest.approx(20.0)


def test_the_simulator_builds_burst_buckets_per_model() -> None:
    config = SimConfig(burst_s=10, rpm_limit=60, model_limits={"claude-x": {"rpm": 300}})
    state = SimState(config)
    assert state.buckets_for("claude-x", 0.0)["requests"].capacity == 50
    assert state.buckets_for("claude-y", 0.0)["requests"].capacity == 10
    assert SimConfig().burst_s is None
    assert SimState(SimConfig(rpm_limit=60)).buckets_for("claude-y", 0.0)[
        "requests"].capacity == 60


@pytest.mark.parametrize(("burst_s", "message"), [
    (0, "greater than 0"), (-1, "greater than 0"), (61, "less than or equal to 60")])
def test_burst_s_outside_0_to_60_is_refused(burst_s: float, message: str) -> None:
    with pytest.raises(ValueError, match=rf"burst_s\n.*{message}"):
        SimConfig(burst_s=burst_s)
    assert SimConfig(burst_s=60).burst_s == 60 and SimConfig(burst_s=0.5).burst_s == 0.5


def test_farm_sim_takes_burst_s(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[SimConfig] = []
    monkeypatch.setattr(server, "run", served.append)
    result = CliRunner().invoke(main, ["sim", "--port", "9", "--rpm", "300", "--burst-s", "10"])
    assert result.exit_code == 0, result.output
    assert (served[0].burst_s, served[0].rpm_limit) == (10.0, 300)
    refused = CliRunner().invoke(main, ["sim", "--port", "9", "--burst-s", "0"])
    assert refused.exit_code == 2 and "0<x<=60" in refused.output
