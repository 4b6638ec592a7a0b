"""`farm budget set|list|rm` and Farm.budgets against real Redis and Postgres: what is set
is kept in Postgres and mirrored for the workers, bad input is refused naming the problem,
and a change sends the jobs waiting for the budget back to run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli.main import main
from farm.client import Farm
from farm.settings import Settings
from tests_support import fresh_database


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    with fresh_database(database_url, "budgetcli", "head") as url:
        yield {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": url,
               "FARM_DATA_DIR": str(tmp_path)}


def farm(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_set_list_and_remove(env: dict[str, str]) -> None:
    code, out, _ = farm(env, "budget", "set", "--tenant", "search", "--usd", "50")
    assert code == 0, out
    assert out.splitlines()[0] == ("tenant:search:day: hard $50.00 a day for tenant search, "
                                   "wait at the limit")
    assert "spent $0.00, reserved $0.00, remaining $50.00 of $50.00 (0% used)" in out
    code, out, _ = farm(env, "budget", "set", "--global", "--usd", "1000", "--period", "month",
                        "--soft", "0.8")
    assert code == 0 and "soft $1,000.00 a month for the farm, alert at 80%" in out
    code, out, _ = farm(env, "budget", "list")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["budget", "mode", "period", "limit"]
    assert lines[2].split()[:2] == ["global:month", "soft"]
    assert lines[3].split()[:2] == ["tenant:search:day", "hard"]
    code, out, _ = farm(env, "budget", "list", "--json")
    views = json.loads(out)
    assert [v["budget"]["limit_usd"] for v in views] == ["1000.0000000000", "50.0000000000"]
    assert {v["remaining_usd"] for v in views} == {"1000.0000000000", "50.0000000000"}
    # raised: the same budget, changed in place
    assert farm(env, "budget", "set", "--tenant", "search", "--usd", "75")[0] == 0
    _, out, _ = farm(env, "budget", "list", "--json")
    assert json.loads(out)[1]["budget"]["limit_usd"] == "75.0000000000"
    code, out, _ = farm(env, "budget", "rm", "tenant:search:day")
    assert code == 0 and "removed" in out
    code, _, err = farm(env, "budget", "rm", "tenant:search:day")
    assert code == 1 and "no budget 'tenant:search:day'; budgets: global:month" in err


@pytest.mark.parametrize(("args", "problem"), [
    (["--usd", "5"], "give exactly one of --global, --tenant, --queue, --model"),
    (["--tenant", "a", "--queue", "b", "--usd", "5"], "give exactly one of"),
    (["--tenant", "a", "--usd", "-5"], "-5 must be a positive amount of USD"),
    (["--tenant", "a", "--usd", "lots"], "'lots' is not an amount of USD"),
    (["--tenant", "a b", "--usd", "5"], "name: 'a b': letters, digits and _ . : - only"),
    (["--tenant", "a", "--usd", "5", "--period", "week"], "'week' is not one of"),
    (["--tenant", "a", "--usd", "5", "--soft", "0.5", "--alert-at", "0.4"], "drop alert_at"),
    (["--tenant", "a", "--usd", "5", "--soft", "1.5"], "1.5 is not in the range"),
])
def test_bad_budgets_are_refused_and_nothing_is_kept(env: dict[str, str], args: list[str],
                                                     problem: str) -> None:
    code, _, err = farm(env, "budget", "set", *args)
    assert code in (1, 2) and problem in err
    _, out, _ = farm(env, "budget", "list")
    assert out.startswith("no budgets")


def test_a_change_sends_the_jobs_waiting_for_the_budget_back(env: dict[str, str]) -> None:
    settings = Settings(broker_url=env["FARM_BROKER_URL"], database_url=env["FARM_DATABASE_URL"])
    with Farm(settings) as client:
        waiting, other = client.submit_many([{"prompt": "a", "tenant": "a"},
                                             {"prompt": "b", "tenant": "b"}])
        wait = ("UPDATE jobs SET next_run_at = now() + interval '1 hour', "
                "wait_reason = %(r)s WHERE id = %(id)s")
        with client.db.begin() as conn:
            conn.execute(wait, {"r": "budget tenant:a:day: spent $1.00 of $1.00", "id": waiting})
            conn.execute(wait, {"r": "budget tenant:ab:day: spent $1.00 of $1.00", "id": other})
        budget, woken = client.budgets.set(tenant="a", usd="2")
        assert (budget.id, woken) == ("tenant:a:day", 1)
        assert client.status(waiting).wait_reason is None
        assert client.status(other).wait_reason is not None  # another budget's wait goes on
