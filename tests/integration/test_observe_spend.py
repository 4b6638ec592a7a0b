"""Budgets and the cost breaker in the cockpit, against real Redis and Postgres: a soft
budget set through Farm.budgets, spend recorded through the ledger (charge, the limiter's
acquire, settle) as a worker records it, then `farm alerts --json` fires FarmBudgetAlert and
FarmCostBreakerOpen and `farm exporter`'s /metrics serves the budget and breaker gauges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from click.testing import CliRunner

from farm.capacity.build import ledger_config, redis_limiter
from farm.capacity.limits import Grant, Wait
from farm.cli.main import main
from farm.client import Farm
from farm.costs import budgets as b
from farm.costs.book import BudgetBook
from farm.costs.ledger import Charge, Ledger
from farm.jobs import Priority
from farm.observe.evaluate import evaluate
from farm.observe.rules import DEFAULTS
from farm.observe.snapshot import take_for
from farm.settings import QueueSpec, Settings
from farm.store.db import Database
from tests_support import free_port, fresh_database, wait_port

MODEL = "claude-haiku-4-5"
TENANT = "obs-spend"
QUEUE = "obs-spend-q"
BUDGET = f"tenant:{TENANT}:day"


@pytest.fixture(scope="module")
def database_url(service_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this module's own: the snapshot reads every budget."""
    with fresh_database(service_urls[1], "farm_observe_spend", "head") as url:
        yield url


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    """The farm of this test: one queue, an overall cost breaker at $0.50 a minute and one
    for the model at $100 (stays closed)."""
    queues = [QueueSpec(name=QUEUE, model=MODEL, complexity="simple").model_dump()]
    return {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": database_url,
            "FARM_DATA_DIR": str(tmp_path), "FARM_QUEUES": json.dumps(queues),
            "FARM_COST_BREAKER_USD_PER_MIN": "0.50",
            "FARM_COST_BREAKER_MODEL_USD_PER_MIN": json.dumps({MODEL: "100"}),
            "FARM_COST_BREAKER_WINDOW_S": "60"}


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def call(ledger: Ledger, limiter: Any, worst: str) -> tuple[Charge, Any]:
    """What a worker does before a call: charge, then acquire (seeding a new period)."""
    charge = ledger.charge(TENANT, QUEUE, MODEL, Decimal(worst))
    assert charge is not None
    while True:
        got = limiter.acquire(MODEL, input_tokens=10, output_tokens=10,
                              priority=Priority.NORMAL, tenant=TENANT, charge=charge)
        if not isinstance(got, b.Seed):
            return charge, got
        ledger.seed(charge, got.index)


def spend(settings: Settings, client: redis.Redis, db: Database) -> None:
    """Two calls of up to $0.50 costing $0.45 each ($0.90: 90 % of the budget), and a
    third call the cost breaker stops ($0.90 a minute >= $0.50)."""
    ledger = Ledger(client, db, ledger_config(settings), BudgetBook(client, db).mirrored)
    limiter = redis_limiter(client, settings)
    for _ in range(2):
        charge, got = call(ledger, limiter, "0.50")
        assert isinstance(got, Grant), got
        limiter.release(got)
        ledger.settle(charge, Decimal("0.45"))
    _, stopped = call(ledger, limiter, "0.50")
    assert isinstance(stopped, Wait) and stopped.reason == "cost breaker all open", stopped


def test_a_soft_budget_at_its_share_and_an_open_breaker_fire_and_are_exported(
        settings: Settings, env: dict[str, str], client: redis.Redis, db: Database,
        tmp_path: Path) -> None:
    # a soft $1.00 budget alerting at 80 %; before any spend nothing fires
    with Farm(settings) as farm:
        budget, woken = farm.budgets.set(tenant=TENANT, usd="1.00", period="day", soft=0.8)
    assert budget.id == BUDGET and woken == 0
    quiet = take_for(settings, client, db)
    assert [(x.budget, x.spent_usd, x.alert_share) for x in quiet.budgets] == [
        (BUDGET, Decimal(0), 0.8)]
    assert evaluate(quiet, DEFAULTS, quiet.taken_at).firing == ()

    spend(settings, client, db)
    snap = take_for(settings, client, db)
    [figures] = snap.budgets
    assert (figures.mode, figures.limit_usd, figures.spent_usd, figures.reserved_usd) == (
        "soft", Decimal("1.00"), Decimal("0.9"), Decimal(0))
    breakers = {c.scope: c for c in snap.cost_breakers}
    assert set(breakers) == {"all", MODEL}
    assert breakers["all"].open and not breakers[MODEL].open
    assert Decimal("0.8") < breakers["all"].rate_usd_per_min <= Decimal("0.9")

    result = CliRunner().invoke(main, ["alerts", "--json"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["problems"] == []
    firing = {f["alert"]: f for f in out["firing"]}
    assert set(firing) == {"FarmBudgetAlert", "FarmCostBreakerOpen"}  # soft: not exhausted
    alert = firing["FarmBudgetAlert"]
    assert (alert["labels"], alert["value"], alert["threshold"], alert["severity"]) == (
        {"budget": BUDGET}, pytest.approx(0.9), 0.8, "warning")
    assert alert["summary"] == f"budget {BUDGET}: 90% of its limit spent (alerts at 80%)"
    opened = firing["FarmCostBreakerOpen"]
    assert (opened["labels"], opened["threshold"], opened["severity"]) == (
        {"scope": "all"}, 0.5, "critical")

    port = free_port()
    with (tmp_path / "exporter.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "exporter", "--port",
                                 str(port)], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port)
        page = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        proc.terminate()
        proc.wait(10)
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in page.splitlines() if line.startswith("farm_")}
    assert lines[f'farm_budget_limit_usd{{budget="{BUDGET}",mode="soft",period="day",'
                 'scope="tenant"}'] == 1.0
    assert lines[f'farm_budget_spent_usd{{budget="{BUDGET}"}}'] == 0.9
    assert lines[f'farm_budget_reserved_usd{{budget="{BUDGET}"}}'] == 0.0
    assert lines[f'farm_budget_alert_share{{budget="{BUDGET}"}}'] == 0.8
    assert lines['farm_cost_breaker_open{scope="all"}'] == 1.0
    assert lines[f'farm_cost_breaker_open{{scope="{MODEL}"}}'] == 0.0
    assert lines['farm_cost_breaker_threshold_usd_per_minute{scope="all"}'] == 0.5
    assert lines[f'farm_cost_breaker_threshold_usd_per_minute{{scope="{MODEL}"}}'] == 100.0
    assert 0.8 < lines['farm_cost_rate_usd_per_minute{scope="all"}'] <= 0.9
    assert 0.8 < lines[f'farm_cost_rate_usd_per_minute{{scope="{MODEL}"}}'] <= 0.9
