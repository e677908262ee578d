"""The monitoring of infra/ holds together: Prometheus's configuration, every rule file and every
rule unit test pass promtool; every alert has a test that fires it and one that does not; the
dashboards are valid and use the provisioned data source; and every metric the rules and the
dashboards name is one a service exports. Every file in those folders is checked, whoever
added it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.monitoring import (
    DASHBOARDS,
    GRAFANA,
    PROMETHEUS,
    PROMETHEUS_OWN,
    RULE_FILES,
    RULE_TESTS,
    dashboard_expressions,
    dashboard_panels,
    exported_metric_names,
    jobs_selected,
    load_yaml,
    metric_names,
    rules,
)

# Debian's `prometheus` package ships it (.ci/run installs it).
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool is missing: install Debian's `prometheus` package (see .ci/run)")
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def name(path: Path) -> str:
    return path.name


def test_the_scrape_configuration_is_valid_and_loads_every_rule_file() -> None:
    output = promtool("check", "config", "prometheus.yml")
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output


def test_there_are_rules_their_tests_and_dashboards_to_check() -> None:
    assert RULE_FILES and RULE_TESTS and DASHBOARDS


@pytest.mark.parametrize("path", RULE_FILES, ids=name)
def test_each_rule_file_is_valid(path: Path) -> None:
    promtool("check", "rules", str(path))


@pytest.mark.parametrize("path", RULE_TESTS, ids=name)
def test_each_rule_unit_test_passes(path: Path) -> None:
    promtool("test", "rules", path.name, cwd=path.parent)


def _alert_tests() -> dict[str, list[list[Any]]]:
    """Per alert name, the expected alerts of each of its evaluations in every test file."""
    expected: dict[str, list[list[Any]]] = {}
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                expected.setdefault(check["alertname"], []).append(check.get("exp_alerts") or [])
    return expected


@pytest.mark.parametrize("path", RULE_FILES, ids=name)
def test_every_alert_is_tested_firing_and_not_firing(path: Path) -> None:
    tested = _alert_tests()
    for rule in rules(path):
        if "alert" not in rule:
            continue
        evaluations = tested.get(rule["alert"], [])
        assert any(evaluations), f"{rule['alert']}: no test where it fires"
        assert any(not e for e in evaluations), f"{rule['alert']}: no test where it does not"


def test_every_rule_file_is_loaded_by_a_unit_test() -> None:
    loaded = {
        (path.parent / rule_file).resolve()
        for path in RULE_TESTS
        for rule_file in load_yaml(path)["rule_files"]
    }
    assert {path.resolve() for path in RULE_FILES} <= loaded


def test_every_alert_says_how_severe_it_is_and_what_happened() -> None:
    for path in RULE_FILES:
        for rule in rules(path):
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
                assert rule["annotations"]["summary"].strip(), rule["alert"]


def test_the_rules_select_only_jobs_prometheus_scrapes() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    scraped = {job["job_name"] for job in config["scrape_configs"]}
    for path in RULE_FILES:
        for rule in rules(path):
            assert jobs_selected(rule["expr"]) <= scraped, rule.get("alert", rule.get("record"))


def test_every_metric_the_rules_and_dashboards_name_is_one_a_service_exports() -> None:
    exported = exported_metric_names() | PROMETHEUS_OWN
    named = {
        f"{path.name}: {metric}"
        for path in RULE_FILES
        for rule in rules(path)
        for metric in metric_names(rule["expr"])
        if metric not in exported
    } | {
        f"{path.name}: {metric}"
        for path in DASHBOARDS
        for expr in dashboard_expressions(path)
        for metric in metric_names(expr)
        if metric not in exported
    }
    assert named == set()


def test_metric_names_are_read_from_promql_as_prometheus_would() -> None:
    expr = (
        'sum by (job) (rate(poscal_a_total{job=~"a|b", le="1"}[5m] offset 1h)) > 0'
        " and on (job) histogram_quantile(0.9, poscal_b_bucket[$__rate_interval])"
        ' or label_replace(absent(up{job="w"}), "job", "w", "", "")'
    )
    assert metric_names(expr) == {"poscal_a_total", "poscal_b_bucket", "up"}


def _provisioned_datasource_uids() -> set[str]:
    return {
        source["uid"]
        for path in sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))
        for source in load_yaml(path)["datasources"]
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=name)
def test_each_dashboard_is_valid_with_unique_panel_ids_and_the_provisioned_datasource(
    path: Path,
) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    sources = _provisioned_datasource_uids()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in sources, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] in sources, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_the_dashboards_are_provisioned_from_where_compose_mounts_them() -> None:
    compose = load_yaml(PROMETHEUS.parent / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    [provider] = load_yaml(GRAFANA / "provisioning" / "dashboards" / "poscal.yml")["providers"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    prometheus = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in prometheus
    assert re.search(r"rules/\*\.yml", (PROMETHEUS / "prometheus.yml").read_text())
