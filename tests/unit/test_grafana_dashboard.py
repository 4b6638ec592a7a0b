"""ops/grafana/farm.json is an importable Grafana dashboard (Grafana is not installed here,
so its structure is checked): a Prometheus datasource variable every panel and query uses,
unique panel ids and refIds, panels on the grid without overlaps, and the panels the
operator needs. `make test-ops` runs each of its queries on a real Prometheus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "farm.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows left out."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def test_importable(dashboard: dict[str, Any]) -> None:
    # an import gives a new dashboard its own id; uid and title identify it
    assert dashboard["id"] is None
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    for name, variable in variables.items():
        if variable["type"] == "query":  # filters: All means every value, not a list
            assert variable["datasource"] == DATASOURCE, name
            assert variable["includeAll"] and variable["allValue"] == ".*", name


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]
                                                            ) -> None:
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]


def test_panel_ids_are_unique_and_the_grid_has_no_overlap(dashboard: dict[str, Any]) -> None:
    every = dashboard["panels"]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(("title", "fragments"), [
    ("Throughput", ["rate(farm_jobs_finished_total"]),
    ("Job duration P50 / P95 / P99", [
        f"histogram_quantile({q}, sum by (le) (rate(farm_job_duration_seconds_bucket"
        for q in ("0.5", "0.95", "0.99")]),
    ("Provider latency P50 / P95 / P99", [
        f"histogram_quantile({q}, sum by (le, model) (rate("
        "farm_provider_latency_seconds_bucket" for q in ("0.5", "0.95", "0.99")]),
    ("Error rate by class", ['sum by (outcome) (rate(farm_provider_calls_total',
                             'outcome!="ok"']),
    ("Queue depth", ["farm_queue_depth"]),
    ("Oldest waiting job", ["farm_queue_oldest_wait_seconds"]),
    ("Pool utilisation", ["farm_pool_busy", "/ sum by (queue) (farm_pool_slots"]),
    ("Cost per hour, by model", ["sum by (model) (rate(farm_cost_usd_total", "* 3600"]),
    ("Cost per hour, by tenant", ["sum by (tenant) (rate(farm_cost_usd_total", "* 3600"]),
    ("Circuit state", ["farm_circuit_open"]),
    ("Budgets used (spent / limit)", [
        "max by (budget) (farm_budget_spent_usd) / max by (budget) (farm_budget_limit_usd)",
        "farm_budget_reserved_usd"]),
    ("Budget spend, limit and alert line", ["farm_budget_alert_share"]),
    ("Spend rate vs cost breaker threshold", ["farm_cost_rate_usd_per_minute",
                                              "farm_cost_breaker_threshold_usd_per_minute"]),
    ("Cost breaker open", ["max by (scope) (farm_cost_breaker_open)"]),
])
def test_the_panels_the_issue_asks_for(dashboard: dict[str, Any], title: str,
                                       fragments: list[str]) -> None:
    found = [p for p in panels(dashboard) if p["title"].startswith(title)]
    assert found, f"no panel titled {title}…"
    exprs = " ".join(t["expr"] for p in found for t in p["targets"])
    for fragment in fragments:
        assert fragment in exprs, (title, fragment)
