"""Alert rules: promtool checks and unit tests, runbooks, the metrics they query, and the
rules as the Helm chart renders them (job and namespace of the release, external lag source,
kube-prometheus-stack style overrides), run through promtool too.

Needs promtool on PATH (ops/tools/install-prometheus.sh installs Debian's `prometheus`;
scripts/bootstrap runs it) and helm (tests/integration/chart.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.integration.chart import CHART, CI_VALUES, VALUE_SETS, run_helm

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "ops" / "alerts"
RULES = ALERTS / "imconnector-consumer.rules.yaml"
EXTERNAL_RULES = ALERTS / "imconnector-consumer-external-lag.rules.yaml"
RULE_FILES = (RULES, EXTERNAL_RULES)
TESTS = sorted((ALERTS / "tests").glob("*.yaml"))
RUNBOOKS = REPO / "ops" / "runbooks"
CHART_FILES = REPO / "helm" / "imconnector-consumer" / "files"
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
    "ImconnectorConsumerGroupLagHigh",
    "ImconnectorConsumerInboundPullLagGrowing",
    "ImconnectorConsumerInboundPushEventsLost",
}
# Alerts whose expression ends with "<comparison> <number>": the chart's customRules can
# tune that number.
TUNABLE = EXPECTED_ALERTS - {
    "ImconnectorConsumerDown",
    "ImconnectorConsumerAbsent",
    "ImconnectorConsumerNotReady",
    "ImconnectorConsumerCircuitBreakerOpen",
}
EXTERNAL_METRICS = {"keda_scaler_metrics_value", "kafka_consumergroup_lag"}


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


def alert_rules(*files: Path) -> list[dict[str, Any]]:
    """Alerting rules of the given rule files (default: all of ops/alerts)."""
    out = []
    for path in files or RULE_FILES:
        rules = yaml.safe_load(path.read_text())
        out += [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    return out


def alert_rule_tests() -> list[dict[str, Any]]:
    cases = []
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules(path))} rules found" in result.stdout


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
    old = f"(imconnector_oldest_unfinished_event_age_seconds{{{SELECTOR}}}) > 600"
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, old.replace("> 600", "> 6000")))
    (tmp_path / EXTERNAL_RULES.name).write_text(EXTERNAL_RULES.read_text())
    result = run(promtool, "test", "rules", *(f"tests/{p.name}" for p in TESTS), cwd=tmp_path)
    assert result.returncode != 0
    assert "ImconnectorConsumerOldestEventTooOld" in result.stdout + result.stderr


def test_the_expected_alerts_exist() -> None:
    names = [rule["alert"] for rule in alert_rules(RULES)]
    assert len(names) == len(set(names)), "duplicate alert names"
    # One external lag alert per source, in a group of its own: load (or render) one.
    groups = yaml.safe_load(EXTERNAL_RULES.read_text())["groups"]
    assert [g["name"] for g in groups] == [
        "imconnector-consumer-external-lag-keda",
        "imconnector-consumer-external-lag-kafka-exporter",
    ]
    for group in groups:
        assert [r["alert"] for r in group["rules"]] == ["ImconnectorConsumerGroupLagHigh"]
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels'].get('lag_source', '')}"
)
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
    assert len(exprs) == len(EXPECTED_ALERTS) - 1
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


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_chart_copy_is_identical(path: Path) -> None:
    copy = CHART_FILES / path.name
    assert copy.read_bytes() == path.read_bytes(), (
        f"{copy.relative_to(REPO)} is stale: run ops/tools/sync-chart-files.sh"
    )


def test_external_lag_rules_read_only_the_brokers_view() -> None:
    """No service metric: these must work when no replica is up to export any."""
    tool = load_tool()
    for name, expr in tool.rule_expressions(yaml.safe_load(EXTERNAL_RULES.read_text())):
        metrics, unknown = tool.parse(expr)
        assert not unknown, name
        assert metrics and metrics <= EXTERNAL_METRICS, (name, metrics)


SELECTOR = 'job="imconnector-consumer", namespace=~".*"'


@pytest.mark.parametrize("rule", alert_rules(RULES), ids=lambda r: r["alert"])
def test_every_service_metric_is_selected_by_job_and_namespace(rule: dict[str, Any]) -> None:
    """Each metric reference carries the job and namespace matchers the chart rewrites."""
    tool = load_tool()
    expr = rule["expr"]
    metrics, _ = tool.parse(expr)
    assert metrics
    for metric in metrics:
        uses = re.findall(rf"\b{metric}\b(\{{[^}}]*\}})?", expr)
        assert uses, metric
        for matchers in uses:
            assert matchers.startswith("{" + SELECTOR), (metric, matchers or "no matchers")


def test_tunable_alerts_end_with_their_threshold() -> None:
    tail = re.compile(r"(>=|<=|>|<)\s*[-+]?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\s*$")
    tunable = {rule["alert"] for rule in alert_rules() if tail.search(rule["expr"])}
    assert tunable == TUNABLE


# --- the rules as the chart renders them ------------------------------------------------

OPS_TESTS = ALERTS / "tests"


def rendered_groups(helm: str, *sets: str, namespace: str = "chat") -> list[dict[str, Any]]:
    """The PrometheusRule's groups for release `rel` in `namespace`, with `sets`."""
    args = ["template", "rel", str(CHART), "--namespace", namespace]
    args += ["-f", str(CI_VALUES / VALUE_SETS["defaults"])]
    for item in ("metrics.prometheusRule.enabled=true", *sets):
        args += ["--set", item]
    result = run_helm(helm, *args, "--show-only", "templates/prometheusrule.yaml")
    assert result.returncode == 0, result.stderr
    groups: list[dict[str, Any]] = yaml.safe_load(result.stdout)["spec"]["groups"]
    return groups


def promtool_test(
    promtool: str,
    tmp_path: Path,
    groups: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    *,
    annotations: bool = True,
) -> None:
    """`promtool check rules` and `promtool test rules` of rendered groups; fails on either.
    With annotations=False they are left out of the rules (tests that state labels only;
    the annotations are pinned by test_chart_rules_pass_the_ops_unit_tests)."""
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups
        ]
    rules = tmp_path / "rendered.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    checked = run(promtool, "check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    suite = tmp_path / "rendered.test.yaml"
    suite.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    result = run(promtool, "test", "rules", suite.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def ops_tests(name: str) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load((OPS_TESTS / name).read_text())["tests"]
    return tests


def uses_metric(test: dict[str, Any], metric: str) -> bool:
    return any(s["series"].startswith(metric + "{") for s in test["input_series"])


@pytest.mark.parametrize("source", ["none", "keda", "kafka-exporter"])
def test_chart_rules_pass_the_ops_unit_tests(
    promtool: str, helm: str, tmp_path: Path, source: str
) -> None:
    """Rendered for namespace chat (the namespace of the unit tests' series), the chart's
    rules behave as ops/alerts/ under every unit test, annotations included."""
    groups = rendered_groups(
        helm,
        "fullnameOverride=imconnector-consumer",
        f"keda.enabled={str(source == 'keda').lower()}",
        f"metrics.prometheusRule.externalLag.source={source}",
    )
    service = ["imconnector-consumer", "imconnector-consumer-inbound"]
    external = {
        "none": [],
        "keda": ["imconnector-consumer-external-lag-keda"],
        "kafka-exporter": ["imconnector-consumer-external-lag-kafka-exporter"],
    }
    assert [g["name"] for g in groups] == service + external[source]
    tests = ops_tests("imconnector-consumer.test.yaml") + ops_tests("imconnector-inbound.test.yaml")
    metric = {"keda": "keda_scaler_metrics_value", "kafka-exporter": "kafka_consumergroup_lag"}
    tests += [
        test
        for test in ops_tests("imconnector-consumer-external-lag.test.yaml")
        if source in metric and uses_metric(test, metric[source])
    ]
    # The one difference: the chart labels every alert with the release namespace, also
    # those whose expression keeps none (absent(), kafka-exporter's series).
    for test in tests:
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                alert["exp_labels"].setdefault("namespace", "chat")
    promtool_test(promtool, tmp_path, groups, tests)


def test_chart_rules_watch_only_the_release_namespace(
    promtool: str, helm: str, tmp_path: Path
) -> None:
    """A release in namespace chat neither pages for pods of another namespace nor counts
    them as alive."""
    groups = rendered_groups(helm)
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    assert all('namespace="chat"' in e and 'namespace=~".*"' not in e for e in exprs)
    series = [
        ('up{job="imconnector-consumer", namespace="other", pod="o-0", instance="o"}', "1x30"),
        ('up{job="imconnector-consumer", namespace="chat", pod="c-0", instance="c"}', "0x30"),
        ('imconnector_ready{job="imconnector-consumer", namespace="other", pod="o-0"}', "0x30"),
        (
            'imconnector_oldest_unfinished_event_age_seconds{job="imconnector-consumer", '
            'namespace="other", pod="o-0", topic="t", partition="0"}',
            "0+60x30",
        ),
    ]
    expected_down = {
        "severity": "critical",
        "job": "imconnector-consumer",
        "namespace": "chat",
        "pod": "c-0",
        "instance": "c",
    }
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": "ImconnectorConsumerNotReady", "exp_alerts": []},
                {
                    "eval_time": "25m",
                    "alertname": "ImconnectorConsumerOldestEventTooOld",
                    "exp_alerts": [],
                },
                {
                    "eval_time": "25m",
                    "alertname": "ImconnectorConsumerDown",
                    "exp_alerts": [{"exp_labels": expected_down}],
                },
                # The healthy pod of namespace other does not keep chat's Absent quiet.
                {
                    "eval_time": "25m",
                    "alertname": "ImconnectorConsumerAbsent",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "namespace": "chat"}}],
                },
            ],
        }
    ]
    promtool_test(promtool, tmp_path, groups, tests, annotations=False)


def test_custom_rules_tune_threshold_for_severity_and_routing(
    promtool: str, helm: str, tmp_path: Path
) -> None:
    alert = "metrics.prometheusRule.customRules.ImconnectorConsumerOldestEventTooOld"
    groups = rendered_groups(
        helm,
        f"{alert}.threshold=1800",
        f"{alert}.for=1m",
        f"{alert}.severity=warning",
        "metrics.prometheusRule.disabled.ImconnectorConsumerRestarting=true",
        "metrics.prometheusRule.additionalRuleLabels.team=messaging",
        "metrics.prometheusRule.additionalRuleAnnotations.dashboard=https://grafana.example.com/d/imc",
    )
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert "ImconnectorConsumerRestarting" not in rules
    assert set(rules) == EXPECTED_ALERTS - {
        "ImconnectorConsumerRestarting",
        "ImconnectorConsumerGroupLagHigh",  # no KEDA, no source chosen
    }
    for rule in rules.values():
        assert rule["labels"]["team"] == "messaging"
        assert rule["annotations"]["dashboard"] == "https://grafana.example.com/d/imc"
    assert rules["ImconnectorConsumerDown"]["labels"]["severity"] == "critical"  # kept
    assert rules["ImconnectorConsumerOldestEventTooOld"]["expr"].endswith("> 1800")
    age = (
        'imconnector_oldest_unfinished_event_age_seconds{job="imconnector-consumer", '
        'namespace="chat", pod="c-0", topic="chat-events", partition="0"}'
    )
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": age, "values": "0+60x40"}],
            "alert_rule_test": [
                # 25 minutes old: the default 600 s would have fired long ago.
                {
                    "eval_time": "25m",
                    "alertname": "ImconnectorConsumerOldestEventTooOld",
                    "exp_alerts": [],
                },
                {
                    "eval_time": "32m",
                    "alertname": "ImconnectorConsumerOldestEventTooOld",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "team": "messaging",
                                "namespace": "chat",
                                "topic": "chat-events",
                            }
                        }
                    ],
                },
            ],
        }
    ]
    promtool_test(promtool, tmp_path, groups, tests, annotations=False)


def test_keda_lag_alert_with_honor_labels(promtool: str, helm: str, tmp_path: Path) -> None:
    """KEDA's metrics scraped with honorLabels keep their own namespace label."""
    groups = rendered_groups(
        helm,
        "keda.enabled=true",
        "metrics.prometheusRule.externalLag.kedaNamespaceLabel=namespace",
        "metrics.prometheusRule.customRules.ImconnectorConsumerGroupLagHigh.for=1m",
    )
    lag = (
        'keda_scaler_metrics_value{job="keda-operator", namespace="chat", '
        'scaledObject="rel-imconnector-consumer", scaler="kafkaScaler", triggerIndex="0", '
        'metric="s0-kafka-chat-events", type="scaledobject"}'
    )
    other_ns = lag.replace('namespace="chat"', 'namespace="elsewhere"')
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {"series": lag, "values": "1150x10"},
                {"series": other_ns, "values": "1150x10"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "ImconnectorConsumerGroupLagHigh",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "lag_source": "keda",
                                "namespace": "chat",
                                "scaledObject": "rel-imconnector-consumer",
                                "metric": "s0-kafka-chat-events",
                            }
                        }
                    ],
                }
            ],
        }
    ]
    promtool_test(promtool, tmp_path, groups, tests, annotations=False)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("keda.enabled=true", "keda.lagThreshold=50"),  # 12 partitions x 50 = 600 <= 1000
            "can never be reached: KEDA caps the lag it reports at kafka.partitions x "
            "keda.lagThreshold = 600",
        ),
        (
            ("metrics.prometheusRule.customRules.ImconnectorConsumerDown.threshold=1",),
            "customRules.ImconnectorConsumerDown.threshold: this alert has no threshold to tune",
        ),
        (
            ("metrics.prometheusRule.customRules.ImconnectorConsumerDwon.for=1m",),
            "invalid propertyName 'ImconnectorConsumerDwon'",
        ),
        (
            ("metrics.prometheusRule.externalLag.source=keda",),
            "externalLag.source keda needs keda.enabled",
        ),
    ],
    ids=["keda-cap", "no-threshold", "unknown-alert", "keda-off"],
)
def test_impossible_rule_values_fail_the_render(
    helm: str, sets: tuple[str, ...], message: str
) -> None:
    args = ["template", "rel", str(CHART), "-f", str(CI_VALUES / VALUE_SETS["defaults"])]
    for item in ("metrics.prometheusRule.enabled=true", *sets):
        args += ["--set", item]
    result = run_helm(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_chart_schema_knows_every_alert_by_name() -> None:
    """customRules and disabled refuse a misspelt alert; a new alert must be added there."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    rule = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]
    for key in ("disabled", "customRules"):
        assert set(rule[key]["propertyNames"]["enum"]) == EXPECTED_ALERTS, key
