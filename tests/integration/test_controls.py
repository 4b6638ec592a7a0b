"""Operator controls against the cluster's real Redis: `farm throttle` refuses models the
farm cannot call, and says so when a model has no limits for the throttle to cut yet."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli.main import main


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": database_url,
            "FARM_DATA_DIR": str(tmp_path),
            "FARM_LIMITS": '{"claude-sonnet-5-5": {"rpm": 600}}'}


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


def test_a_throttle_on_a_model_without_limits_says_it_waits_for_them(
        env: dict[str, str]) -> None:
    code, out, err = farm(env, "throttle", "claude-haiku-4-5", "1")
    assert code == 0 and "throttled to 1%" in out
    assert "has no limits yet" in err
    assert farm(env, "throttle", "claude-haiku-4-5", "off")[0] == 0
