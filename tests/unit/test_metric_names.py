"""Every metric the dashboard and the Prometheus files name is one the farm exports
(farm.observe.names), and every metric the farm exports is shown somewhere (a dashboard
panel or an alert rule) or listed here as intentionally not shown."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.observe import names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "ops" / "grafana").glob("*.json"))
PROMETHEUS_FILES = sorted((ROOT / "ops" / "prometheus").glob("*.yml"))
ALERT_RULES = ROOT / "ops" / "prometheus" / "farm-alerts.yml"

# metrics of names.py that neither the dashboard nor a rule shows, each with its reason
NOT_SHOWN: dict[str, str] = {}

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENTIFIER = re.compile(r"(?<![\w:])farm_[A-Za-z0-9_:]*")


def farm_identifiers(promql: str) -> set[str]:
    """The identifiers starting with farm_ in a PromQL expression (metric names; quoted
    label values are left out)."""
    return set(IDENTIFIER.findall(STRING.sub('""', promql)))


def test_identifiers_are_read_from_promql_not_from_its_strings() -> None:
    expr = ('sum by (queue) (rate(farm_jobs_finished_total{queue=~"farm_x|farm-intake"}'
            "[5m])) / on(queue) farm_pool_slots > 0.5 unless farm_hold")
    assert farm_identifiers(expr) == {"farm_jobs_finished_total", "farm_pool_slots",
                                      "farm_hold"}
    assert farm_identifiers("histogram_quantile(0.95, sum by (le) (rate("
                            "farm_job_duration_seconds_bucket[5m])))") == {
        "farm_job_duration_seconds_bucket"}


def _dashboard_exprs(node: Any) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets (rows' nested panels too) and
    template variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str) and "farm_" in value:
                yield value  # a template variable: label_values(farm_…, label)
            elif key == "query" and isinstance(value, dict) and isinstance(
                    value.get("query"), str):
                yield value["query"]
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def _rule_exprs(doc: Any) -> Iterator[str]:
    """Expressions of a rule file (groups → rules → expr) or of a promtool test file
    (input_series' series, promql_expr_test's expr)."""
    if not isinstance(doc, dict):
        return
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            yield str(rule.get("expr", ""))
    for case in doc.get("tests") or []:
        for series in case.get("input_series") or []:
            yield str(series.get("series", ""))
        for expr_test in case.get("promql_expr_test") or []:
            yield str(expr_test.get("expr", ""))
            for sample in expr_test.get("exp_samples") or []:
                yield str(sample.get("labels", ""))


def _recorded(doc: Any) -> set[str]:
    """Names of the recording rules a rule file defines: usable by the others."""
    if not isinstance(doc, dict):
        return set()
    return {str(rule["record"]) for group in doc.get("groups") or []
            for rule in group.get("rules") or [] if "record" in rule}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def used_names() -> dict[Path, set[str]]:
    used: dict[Path, set[str]] = {}
    for path in DASHBOARDS:
        exprs = list(_dashboard_exprs(json.loads(path.read_text())))
        used[path] = set().union(*map(farm_identifiers, exprs))
    for path in PROMETHEUS_FILES:
        used[path] = set().union(*map(farm_identifiers, _rule_exprs(_load(path))))
    return used


def test_the_files_are_there() -> None:
    assert (ROOT / "ops" / "grafana" / "farm.json") in DASHBOARDS
    assert ALERT_RULES in PROMETHEUS_FILES, "ops/prometheus/farm-alerts.yml (render_rules)"
    assert ROOT / "ops" / "prometheus" / "prometheus.yml" in PROMETHEUS_FILES


@pytest.mark.parametrize("path", [*DASHBOARDS, *PROMETHEUS_FILES],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_metric_named_is_exported(path: Path) -> None:
    recorded: set[str] = set().union(*(_recorded(_load(p)) for p in PROMETHEUS_FILES))
    unknown = used_names()[path] - names.exported_names() - recorded
    assert not unknown, f"{path.relative_to(ROOT)} names metrics the farm does not export: " \
                        f"{sorted(unknown)}"


def test_every_exported_metric_is_shown_or_listed_as_not_shown() -> None:
    used = set().union(*used_names().values())
    shown = {m for m in names.ALL if m in used or {f"{m}_bucket", f"{m}_sum",
                                                  f"{m}_count"} & used}
    missing = set(names.ALL) - shown - set(NOT_SHOWN)
    assert not missing, f"exported, yet in no dashboard or rule, nor in NOT_SHOWN: " \
                        f"{sorted(missing)}"
    assert not set(NOT_SHOWN) - set(names.ALL), "NOT_SHOWN lists names names.py lacks"
    assert not set(NOT_SHOWN) & shown, "NOT_SHOWN lists metrics that are shown after all"


def test_the_dashboard_shows_every_metric_of_the_catalogue() -> None:
    """The dashboard alone (rules aside) has a panel for each metric: an operator sees
    all of them in one place."""
    used = used_names()[ROOT / "ops" / "grafana" / "farm.json"]
    base = {re.sub(r"_(bucket|sum|count)$", "", n) if n not in names.ALL else n
            for n in used}
    assert set(names.ALL) - set(NOT_SHOWN) <= base, sorted(set(names.ALL) - base)
