"""Operator controls against the cluster's real Redis: `farm throttle` refuses models the
farm cannot call, and holds a model with no limits to a percent of its recent rate."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from farm.capacity import build
from farm.capacity.limits import Grant, Wait
from farm.cli.main import main
from farm.jobs import Priority
from farm.settings import Settings


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The CLI's environment; the limiter's state of the models used here is cleared before
    and after (other tests' calls count in a model's recent rate)."""
    def clear() -> None:
        client = redis.Redis.from_url(broker_url)
        try:
            for model in ("claude-haiku-4-5", "claude-sonnet-5-5"):
                if keys := list(client.scan_iter(f"farm:lim:m:{model}:*")):
                    client.delete(*keys)
        finally:
            client.close()

    clear()
    yield {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": database_url,
           "FARM_DATA_DIR": str(tmp_path),
           "FARM_LIMITS": '{"claude-sonnet-5-5": {"rpm": 600}}'}
    clear()


def farm(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_an_unknown_model_is_refused_and_nothing_is_kept(env: dict[str, str]) -> None:
    code, _, err = farm(env, "throttle", "claude-nonexistent", "50")
    assert code == 2 and "unknown model 'claude-nonexistent'" in err
    _, shown, _ = farm(env, "limits")
    assert "claude-nonexistent" not in shown  # not listed for days as a throttled model
    code, _, err = farm(env, "throttle", "claude-nonexistent", "off")
    assert code == 2 and "no throttle to lift" in err


def test_a_throttle_on_a_model_with_limits_is_applied(env: dict[str, str]) -> None:
    code, out, err = farm(env, "throttle", "claude-sonnet-5-5", "50")
    assert code == 0 and "throttled to 50%" in out and "no limits yet" not in err
    _, shown, _ = farm(env, "limits")
    assert "50%" in shown
    assert farm(env, "throttle", "claude-sonnet-5-5", "off")[0] == 0


def test_a_throttle_on_a_model_without_limits_or_calls_is_refused(
        env: dict[str, str]) -> None:
    code, out, err = farm(env, "throttle", "claude-haiku-4-5", "1")
    assert code == 1 and not out
    assert err.strip().splitlines() == [
        "Error: claude-haiku-4-5 has no limits (none configured, none learned from the "
        "provider's headers) and made 0 calls a minute lately: there is no rate to take a "
        "percent of; set its limits in FARM_LIMITS, or `farm pause` its queue"]
    _, shown, _ = farm(env, "limits")
    # nothing was kept: no limits, no throttle
    assert re.search(r"claude-haiku-4-5\s+rpm\s+-\s+-\s+-\s+-\s+0\s+-\s+closed", shown), shown


def test_a_throttle_on_a_model_without_limits_acts_on_its_recent_rate(
        env: dict[str, str]) -> None:
    """It used to say "throttled to 1%" and change nothing: 8 jobs still ran at once."""
    settings = Settings(broker_url=env["FARM_BROKER_URL"], database_url=env["FARM_DATABASE_URL"],
                        limits=json.loads(env["FARM_LIMITS"]))
    limiter = build.redis_limiter(redis.Redis.from_url(env["FARM_BROKER_URL"]), settings)
    model, ask = "claude-haiku-4-5", {"input_tokens": 100, "output_tokens": 100,
                                      "priority": Priority.NORMAL, "tenant": "acme"}
    limiter.observe(model, {})  # answered without rate-limit headers: it has no limits
    for _ in range(40):  # its recent traffic: 40 calls, all let through (no limits)
        assert limiter.acquire(model, **ask) == Grant(model, "", "acme", 100, 100)
    code, out, _ = farm(env, "throttle", model, "1")
    assert code == 0 and re.fullmatch(
        r"claude-haiku-4-5: throttled to 1% of its recent (\d+) calls a minute \(it has no "
        r"limits\): at most 0.\d+ a minute on all workers together\n", out), out
    got = [limiter.acquire(model, **ask) for _ in range(8)]
    # the first takes the (tiny) bucket; the other seven must wait for the request rate
    assert isinstance(got[0], Grant) and got[0].grant_id
    assert [type(g) for g in got[1:]] == [Wait] * 7 and {g.reason for g in got[1:]} == {"rpm"}
    _, shown, _ = farm(env, "limits")
    assert re.search(r"claude-haiku-4-5\s+rpm\s+-\s+0\.\d+ .* 1%", shown), shown
    code, out, _ = farm(env, "throttle", model, "off")
    assert code == 0 and out == (
        "claude-haiku-4-5: throttle lifted; 0 waiting job(s) sent back to the workers now\n")
    assert limiter.acquire(model, **ask) == Grant(model, "", "acme", 100, 100)  # free again
