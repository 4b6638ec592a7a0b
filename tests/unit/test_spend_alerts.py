"""Budgets and the cost breakers in the cockpit: FarmBudgetAlert, FarmBudgetExhausted and
FarmCostBreakerOpen evaluated on a Snapshot without Prometheus (each series' own threshold),
the webhook's annotations, and the exporter's budget and breaker gauges."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest

from farm.observe import names
from farm.observe.evaluate import evaluate
from farm.observe.exporter import ClusterCollector, families
from farm.observe.figures import BudgetFigures, CostBreaker, Snapshot
from farm.observe.rules import DEFAULTS
from farm.observe.spend import breaker_scopes
from farm.observe.webhook import Notifier
from farm.settings import Settings

NOW = 1_800_000_000.0
QUIET = Snapshot(taken_at=NOW)


def budget(budget_id: str, limit: str, spent: str, *, mode: str = "hard",
           share: float | None = None, reserved: str = "0") -> BudgetFigures:
    scope, _, rest = budget_id.partition(":")
    return BudgetFigures(budget_id, scope, rest.rsplit(":", 1)[-1], mode, Decimal(limit),
                         Decimal(spent), Decimal(reserved), share)


def fired(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                  tuple[float, float]]:
    return {a.key: (a.value, a.threshold) for a in evaluate(snap, DEFAULTS, NOW).firing}


def test_a_soft_budget_alerts_from_its_share_on() -> None:
    under = replace(QUIET, budgets=(budget("tenant:search:day", "10", "7.99", mode="soft",
                                           share=0.8),))
    assert fired(under) == {}
    at = replace(QUIET, budgets=(budget("tenant:search:day", "10", "8", mode="soft",
                                        share=0.8, reserved="1.5"),))
    assert fired(at) == {("FarmBudgetAlert", (("budget", "tenant:search:day"),)): (0.8, 0.8)}
    # a soft budget past its limit still only alerts: it never blocks
    over = replace(QUIET, budgets=(budget("tenant:search:day", "10", "12", mode="soft",
                                          share=0.8),))
    assert fired(over) == {("FarmBudgetAlert", (("budget", "tenant:search:day"),)): (1.2, 0.8)}


def test_reservations_do_not_count_towards_an_alert() -> None:
    snap = replace(QUIET, budgets=(budget("global:day", "10", "7", mode="soft", share=0.8,
                                          reserved="2"),))
    assert fired(snap) == {}


def test_a_hard_budget_alerts_at_its_share_when_set_and_is_exhausted_at_its_limit() -> None:
    shared = budget("global:month", "100", "60", share=0.5)
    bare = budget("queue:q:hour", "5", "4.99")
    assert fired(replace(QUIET, budgets=(shared, bare))) == {
        ("FarmBudgetAlert", (("budget", "global:month"),)): (0.6, 0.5)}
    spent = replace(bare, spent_usd=Decimal("5"))
    assert fired(replace(QUIET, budgets=(spent,))) == {
        ("FarmBudgetExhausted", (("budget", "queue:q:hour"),)): (1.0, 1.0)}
    both = replace(shared, spent_usd=Decimal("100.5"))
    assert fired(replace(QUIET, budgets=(both,))) == {
        ("FarmBudgetAlert", (("budget", "global:month"),)): (1.005, 0.5),
        ("FarmBudgetExhausted", (("budget", "global:month"),)): (1.005, 1.0)}


def test_budget_summaries() -> None:
    snap = replace(QUIET, budgets=(budget("tenant:a:day", "50", "50.25", share=0.8),))
    text = {a.name: (a.summary, a.rule.severity.value)
            for a in evaluate(snap, DEFAULTS, NOW).firing}
    assert text == {
        "FarmBudgetAlert": ("budget tenant:a:day: 100% of its limit spent (alerts at 80%)",
                            "warning"),
        "FarmBudgetExhausted": ("budget tenant:a:day: 100% of its hard limit spent, calls "
                                "turned away (threshold 100%)", "critical")}


def test_an_open_cost_breaker_fires_with_its_rate_and_own_threshold() -> None:
    closed = CostBreaker("claude-sonnet-5-5", Decimal("0.2"), Decimal("0.5"))
    opened = CostBreaker("all", Decimal("0.9"), Decimal("1"), True, NOW - 30)
    assert fired(replace(QUIET, cost_breakers=(closed,))) == {}
    snap = replace(QUIET, cost_breakers=(closed, opened))
    assert fired(snap) == {("FarmCostBreakerOpen", (("scope", "all"),)): (0.9, 1.0)}
    [alert] = evaluate(snap, DEFAULTS, NOW).firing
    assert alert.summary == "cost breaker all open: spending $0.90 a minute (opens at $1.00)"
    assert alert.rule.severity.value == "critical" and alert.since == NOW - 30


def test_with_memory_the_spend_alerts_fire_at_once() -> None:
    """for: 0 — a budget's spend does not fall within its period; the breaker counts from
    its opening."""
    snap = replace(QUIET, budgets=(budget("global:day", "1", "1", share=0.8),),
                   cost_breakers=(CostBreaker("all", Decimal(2), Decimal(1), True, NOW - 5),))
    result = evaluate(snap, DEFAULTS, NOW, {})
    assert result.pending == ()
    assert sorted(a.name for a in result.firing) == [
        "FarmBudgetAlert", "FarmBudgetExhausted", "FarmCostBreakerOpen"]


def test_the_webhook_gives_each_alerts_own_threshold() -> None:
    notifier = Notifier(DEFAULTS)
    snap = replace(QUIET, budgets=(budget("tenant:a:day", "10", "9", mode="soft",
                                          share=0.8),))
    body = notifier.step(snap, NOW)
    assert body is not None
    [alert] = body["alerts"]
    assert alert["labels"] == {"alertname": "FarmBudgetAlert", "severity": "warning",
                               "budget": "tenant:a:day"}
    assert alert["annotations"]["value"] == "90%"
    assert alert["annotations"]["threshold"] == "80%"
    assert "{{" not in alert["annotations"]["summary"]


SPENDING = replace(QUIET, budgets=(
    budget("tenant:search:day", "50", "40.5", mode="soft", share=0.8, reserved="0.25"),
    budget("global:month", "1000", "12.000000001")),
    cost_breakers=(CostBreaker("all", Decimal("0.75"), Decimal("2")),
                   CostBreaker("claude-sonnet-5-5", Decimal("0.6"), Decimal("0.5"), True,
                               NOW)))


def test_the_exporter_serves_budgets_and_breakers() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(lambda: SPENDING))
    text = generate_latest(registry).decode()
    assert ('farm_budget_limit_usd{budget="tenant:search:day",mode="soft",period="day",'
            'scope="tenant"} 50.0') in text
    assert ('farm_budget_limit_usd{budget="global:month",mode="hard",period="month",'
            'scope="global"} 1000.0') in text
    assert 'farm_budget_spent_usd{budget="tenant:search:day"} 40.5' in text
    assert 'farm_budget_spent_usd{budget="global:month"} 12.000000001' in text
    assert 'farm_budget_reserved_usd{budget="tenant:search:day"} 0.25' in text
    assert 'farm_budget_alert_share{budget="tenant:search:day"} 0.8' in text
    assert 'farm_budget_alert_share{budget="global:month"}' not in text  # none set
    assert 'farm_cost_rate_usd_per_minute{scope="all"} 0.75' in text
    assert 'farm_cost_breaker_open{scope="all"} 0.0' in text
    assert 'farm_cost_breaker_open{scope="claude-sonnet-5-5"} 1.0' in text
    assert 'farm_cost_breaker_threshold_usd_per_minute{scope="claude-sonnet-5-5"} 0.5' in text
    for name in ("farm_budget_limit_usd", "farm_cost_breaker_open"):
        assert f"# HELP {name} {names.ALL[name].help}" in text


def test_without_budgets_or_breakers_no_series() -> None:
    text = "".join(str(s) for f in families(QUIET) for s in f.samples)
    assert "farm_budget" not in text and "farm_cost_" not in text


def test_only_configured_breakers_are_read() -> None:
    assert breaker_scopes(Settings()) == []
    settings = Settings(cost_breaker_usd_per_min=Decimal("2"),
                        cost_breaker_model_usd_per_min={"m-b": Decimal("1"),
                                                        "m-a": Decimal("0.5")})
    assert breaker_scopes(settings) == [("all", Decimal(2)), ("m-a", Decimal("0.5")),
                                        ("m-b", Decimal(1))]
