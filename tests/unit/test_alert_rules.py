"""The alert rules: one definition of each threshold (the FARM_ALERT_* settings), rendered
as the Prometheus rule file, whose committed copy must be the rendering of the defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.observe import names
from farm.observe.rules import (
    BY_NAME,
    DEFAULTS,
    RULES,
    Thresholds,
    Unit,
    duration,
    number,
    render_rules,
    show,
    thresholds,
)
from farm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RULE_FILE = ROOT / "ops" / "prometheus" / "farm-alerts.yml"
TEST_FILE = ROOT / "ops" / "prometheus" / "farm-alerts.test.yml"


def test_the_committed_rule_file_is_the_rendering_of_the_defaults() -> None:
    assert RULE_FILE.read_text() == render_rules(DEFAULTS), (
        "regenerate: python -c 'from farm.observe.rules import render_rules; "
        "print(render_rules(), end=\"\")' > ops/prometheus/farm-alerts.yml")


def test_the_defaults_are_the_issues_thresholds() -> None:
    assert Thresholds(queue_depth=500, error_rate=0.02, p95_s=30.0, utilisation=0.9,
                      circuit_open_s=600.0, cost_usd_per_hour=50.0, for_s=300.0) == DEFAULTS
    assert thresholds(Settings()) == DEFAULTS  # no FARM_ALERT_* in the test environment


def test_the_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (("QUEUE_DEPTH", "7"), ("ERROR_RATE", "0.1"), ("P95_S", "2.5"),
                       ("UTILISATION", "0.5"), ("CIRCUIT_OPEN_S", "90"),
                       ("COST_USD_PER_HOUR", "3"), ("FOR_S", "0")):
        monkeypatch.setenv(f"FARM_ALERT_{var}", value)
    assert thresholds(Settings()) == Thresholds(7, 0.1, 2.5, 0.5, 90.0, 3.0, 0.0)


@pytest.mark.parametrize(("field", "value"), [
    ("alert_queue_depth", 0), ("alert_error_rate", 0), ("alert_error_rate", 1.5),
    ("alert_p95_s", -1), ("alert_utilisation", 1.01), ("alert_circuit_open_s", -5),
    ("alert_cost_usd_per_hour", 0), ("alert_for_s", -1)])
def test_bad_thresholds_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_the_rules_are_the_issues_alerts() -> None:
    assert [r.name for r in RULES] == [
        "FarmQueueDepthHigh", "FarmErrorRateHigh", "FarmJobP95Slow", "FarmPoolSaturated",
        "FarmCircuitOpen", "FarmHeld", "FarmCostRateHigh", "FarmBudgetAlert",
        "FarmBudgetExhausted", "FarmCostBreakerOpen"]
    assert {r.severity.value for r in RULES} <= {"warning", "critical"}


def test_every_expression_names_only_exported_metrics() -> None:
    exported = names.exported_names()
    for rule in RULES:
        used = set(re.findall(r"\bfarm_[a-z_]+", rule.expr(DEFAULTS)))
        assert used and used <= exported, (rule.name, used - exported)


def test_the_expressions_carry_the_thresholds() -> None:
    t = Thresholds(queue_depth=5, error_rate=0.25, p95_s=1.5, utilisation=0.75,
                   circuit_open_s=90, cost_usd_per_hour=12.5, for_s=0)
    exprs = {r.name: r.expr(t) for r in RULES}
    assert exprs["FarmQueueDepthHigh"] == "max by (queue) (farm_queue_depth) > 5"
    assert exprs["FarmErrorRateHigh"] == (
        'sum by (queue) (rate(farm_jobs_finished_total{outcome=~"failed|dead"}[5m])) / '
        'sum by (queue) (rate(farm_jobs_finished_total{outcome=~"succeeded|failed|dead"}[5m]))'
        " > 0.25")
    assert exprs["FarmJobP95Slow"] == (
        "histogram_quantile(0.95, sum by (queue, le) "
        "(rate(farm_job_duration_seconds_bucket[5m]))) > 1.5")
    assert exprs["FarmPoolSaturated"].endswith("> 0.75")
    assert exprs["FarmCircuitOpen"] == "max by (model) (farm_circuit_open) > 0"
    assert exprs["FarmHeld"] == "max(farm_hold) > 0"
    assert exprs["FarmCostRateHigh"] == "sum(rate(farm_cost_usd_total[1h])) * 3600 > 12.5"
    assert BY_NAME["FarmCircuitOpen"].for_s(t) == 90  # its threshold is its for:
    assert exprs["FarmBudgetAlert"] == (
        "max by (budget) (farm_budget_spent_usd) / max by (budget) (farm_budget_limit_usd) "
        ">= max by (budget) (farm_budget_alert_share)")
    assert exprs["FarmBudgetExhausted"] == (
        "max by (budget) (farm_budget_spent_usd) / max by (budget) "
        '(farm_budget_limit_usd{mode="hard"}) >= 1 or (max by (budget) '
        "(farm_budget_spent_usd) / max by (budget) "
        '(farm_budget_limit_usd{mode="hard"}) and max by (budget) (farm_budget_refusing) > 0)')
    assert exprs["FarmCostBreakerOpen"] == (
        "max by (scope) (farm_cost_rate_usd_per_minute) and "
        "max by (scope) (farm_cost_breaker_open) > 0")


def test_a_threshold_of_each_series_is_read_by_the_annotations() -> None:
    """A budget's alert share and a breaker's threshold are the series' own: the rule
    file's annotations query them for the alert's label (promtool's tests check the
    result); a rule with a settings threshold shows the number."""
    from farm.observe.rules import rule_annotations

    notes = rule_annotations(BY_NAME["FarmBudgetAlert"], DEFAULTS)
    assert notes["threshold"] == (
        '{{ with printf "max(farm_budget_alert_share{budget=%q})" $labels.budget | query }}'
        "{{ . | first | value | humanizePercentage }}{{ end }}")
    assert notes["threshold"] in notes["summary"]
    breaker = rule_annotations(BY_NAME["FarmCostBreakerOpen"], DEFAULTS)
    assert "farm_cost_breaker_threshold_usd_per_minute{scope=%q}" in breaker["threshold"]
    assert rule_annotations(BY_NAME["FarmBudgetExhausted"], DEFAULTS)["threshold"] == "100%"


def test_a_rendering_with_other_thresholds() -> None:
    text = render_rules(Thresholds(queue_depth=5, error_rate=0.02, p95_s=30, utilisation=0.9,
                                   circuit_open_s=60, cost_usd_per_hour=50, for_s=0))
    assert 'expr: "max by (queue) (farm_queue_depth) > 5"' in text
    assert "threshold 5)" in text
    # for: 0 is left out (fires at the first evaluation); the circuit's is its threshold
    assert text.count("for:") == 1 and "for: 1m" in text


def test_the_rendering_is_structured_yaml() -> None:
    """Without a YAML library: one alert block per rule, each with the same keys in order,
    every string a JSON (= YAML double-quoted) scalar."""
    lines = render_rules().splitlines()
    assert lines[2:5] == ["groups:", "  - name: farm", "    rules:"]
    blocks = "\n".join(lines[5:]).split("      - alert: ")[1:]
    assert len(blocks) == len(RULES)
    for rule, block in zip(RULES, blocks, strict=True):
        keys = [line.strip().split(":")[0] for line in block.splitlines()[1:]]
        expected = ["expr", *(["for"] if rule.for_s(DEFAULTS) else []), "labels", "severity",
                    "annotations", "summary", "description", "value", "threshold"]
        assert block.splitlines()[0] == rule.name and keys == expected
        for line in block.splitlines()[1:]:
            _, _, value = line.partition(": ")
            assert not value or value[0] != '"' or value.endswith('"')


def test_every_alert_has_a_promtool_test() -> None:
    tests = TEST_FILE.read_text()
    for rule in RULES:
        assert f"alertname: {rule.name}" in tests


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (300, "5m"), (600, "10m"), (3600, "1h"), (5430, "1h30m30s")])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_numbers_and_shown_values() -> None:
    assert [number(v) for v in (500, 0.02, 30.0, 1.5)] == ["500", "0.02", "30", "1.5"]
    assert show(0.0476, Unit.RATIO) == "4.76%"
    assert show(45.0, Unit.SECONDS) == "45s"
    assert show(96.0, Unit.USD_PER_HOUR) == "$96.00"
    assert show(0.9, Unit.USD_PER_MINUTE) == "$0.90"
    assert show(1234.0, Unit.COUNT) == "1,234"
    assert show(660.0, Unit.FLAG) == "11m"
