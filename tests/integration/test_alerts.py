"""Alert rules: promtool checks and unit tests, runbooks, and the metrics they query.

Needs promtool on PATH (ops/tools/install-prometheus.sh installs Debian's `prometheus`;
scripts/bootstrap runs it).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "ops" / "alerts"
RULES = ALERTS / "imconnector-consumer.rules.yaml"
TESTS = sorted((ALERTS / "tests").glob("*.yaml"))
RUNBOOKS = REPO / "ops" / "runbooks"
CHART_COPY = REPO / "helm" / "imconnector-consumer" / "files" / RULES.name
PROMETHEUS_INSTALLER = "ops/tools/install-prometheus.sh"

# The alerts operations asked for; removing one must be a deliberate change here too.
EXPECTED_ALERTS = {
    "ImconnectorConsumerDown",
    "ImconnectorConsumerAbsent",
    "ImconnectorConsumerRestarting",
    "ImconnectorConsumerNotReady",
    "ImconnectorConsumerPollLoopStalled",
    "ImconnectorConsumerOldestEventTooOld",
    "ImconnectorConsumerLagGrowing",
    "ImconnectorConsumerDeadLettersGrowing",
    "ImconnectorConsumerCircuitBreakerOpen",
    "ImconnectorConsumerTokenRefreshFailing",
    "ImconnectorConsumerTransactionsAborting",
    "ImconnectorConsumerInboundPullLagGrowing",
    "ImconnectorConsumerInboundPushEventsLost",
}


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool; fails (never skips) with the fix when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            f"promtool not found on PATH: run {PROMETHEUS_INSTALLER} (scripts/bootstrap does it)",
            pytrace=False,
        )
    return path


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "metric_names", REPO / "ops" / "tools" / "metric_names.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("metric_names", module)
    spec.loader.exec_module(module)
    return module


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def alert_rule_tests() -> list[dict[str, Any]]:
    cases = []
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert TESTS, "ops/alerts/tests/*.yaml"
    result = run(promtool, "test", "rules", *(str(p) for p in TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_changed_threshold(promtool: str, tmp_path: Path) -> None:
    """The unit tests pin the rules: loosening one threshold makes them fail."""
    (tmp_path / "tests").mkdir()
    for path in TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    text = RULES.read_text()
    assert "(imconnector_oldest_unfinished_event_age_seconds) > 600" in text
    (tmp_path / RULES.name).write_text(
        text.replace("event_age_seconds) > 600", "event_age_seconds) > 6000")
    )
    result = run(promtool, "test", "rules", *(f"tests/{p.name}" for p in TESTS), cwd=tmp_path)
    assert result.returncode != 0
    assert "ImconnectorConsumerOldestEventTooOld" in result.stdout + result.stderr


def test_the_expected_alerts_exist() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_is_documented(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert len(annotations["description"]) > 60
    assert annotations["runbook_url"] == f"ops/runbooks/{name}.md"
    runbook = REPO / annotations["runbook_url"]
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n")
    for section in ("**Meaning.**", "**Check.**", "**Act.**"):
        assert section in text, f"{runbook.name} lacks {section}"
    assert f"[{name}]({name}.md)" in (RUNBOOKS / "README.md").read_text()


def test_every_runbook_belongs_to_an_alert() -> None:
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == {rule["alert"] for rule in alert_rules()}


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = alert_rule_tests()
    for name in EXPECTED_ALERTS:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no firing case"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no silent case"
        for case in mine:
            for alert in case["exp_alerts"]:
                # Annotations are asserted too, so their templates are tested.
                assert alert["exp_annotations"]["runbook_url"] == f"ops/runbooks/{name}.md"


def test_rules_query_only_defined_metrics() -> None:
    tool = load_tool()
    defined = tool.defined_metric_names()
    exprs = tool.rule_expressions(yaml.safe_load(RULES.read_text()))
    assert len(exprs) == len(EXPECTED_ALERTS)
    used: set[str] = set()
    for name, expr in exprs:
        assert tool.problems(expr, defined) == [], name
        used |= tool.parse(expr)[0]
    assert {
        "imconnector_kafka_consumer_lag",
        "imconnector_oldest_unfinished_event_age_seconds",
        "imconnector_dead_letters_total",
        "imconnector_circuit_breaker_state",
        "imconnector_token_refreshes_total",
        "imconnector_ready",
        "imconnector_transactions_total",
        "imconnector_poll_loop_last_seen_timestamp_seconds",
        "up",
    } <= used


def test_chart_copy_is_identical() -> None:
    assert CHART_COPY.read_bytes() == RULES.read_bytes(), (
        f"{CHART_COPY.relative_to(REPO)} is stale: run ops/tools/sync-chart-files.sh"
    )
