"""The external lag alert, as the Helm chart renders it, in a real Prometheus, with every
replica of the service down.

One consumer engine (the only replica) mirrors a first batch of events and commits; then
it stops, and its /metrics with it: every pod is down. More events arrive. A lag exporter
(tests/integration/lag_exporter.py) reads the group's committed and end offsets from the
real broker and serves them as kafka-exporter and as KEDA's operator would; Prometheus
scrapes it under both jobs, KEDA's with a `namespace` target label as the KEDA chart's
ServiceMonitor gives it (so KEDA's own `namespace` arrives as `exported_namespace`, which
is what the chart's rules expect by default).

The rules are the chart's PrometheusRule (helm template, release namespace "chat"), once
with externalLag.source keda and once with kafka-exporter, with `for` shortened and a
threshold of 5 messages set through the chart's own customRules values.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from consumer.observability.health import OpsServer
from tests.integration.chart import CHART, REPO
from tests.integration.harness import (
    EngineThread,
    chat_event,
    line_simulator,
    make_settings,
    produce,
    wait_until,
)
from tests.integration.lag_exporter import KedaTrigger, LagExporter
from tests.integration.prometheus_server import PrometheusServer, prometheus_binary

pytestmark = pytest.mark.kafka

NAMESPACE = "chat"
RELEASE = "rel"
SCALED_OBJECT = f"{RELEASE}-imconnector-consumer"
ENCODER = [ChatEventEncoder("single-object")]
THRESHOLD = 5
ALERT = "ImconnectorConsumerGroupLagHigh"
# Deadlines, not pauses: every wait ends as soon as its condition holds. Generous, because
# the machine is shared and a slow minute must not fail the test.
PATIENCE = 120


def chart_rules(helm: str, group: str, topic: str, source: str) -> list[dict[str, Any]]:
    """The rule groups of the chart's PrometheusRule for this release and lag source."""
    custom = "metrics.prometheusRule.customRules"
    sets = [
        "kafka.bootstrapServers=kafka:9092",
        f"kafka.groupId={group}",
        f"kafka.topics={{{topic}}}",
        "kafka.partitions=2",
        f"keda.enabled={str(source == 'keda').lower()}",
        "metrics.prometheusRule.enabled=true",
        f"metrics.prometheusRule.externalLag.source={source}",
        f"{custom}.{ALERT}.threshold={THRESHOLD}",
        f"{custom}.{ALERT}.for=1s",
        f"{custom}.ImconnectorConsumerAbsent.for=1s",
    ]
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for item in sets:
        args += ["--set", item]
    args += ["--show-only", "templates/prometheusrule.yaml"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    groups: list[dict[str, Any]] = yaml.safe_load(result.stdout)["spec"]["groups"]
    return groups


def scrape_job(name: str, port: int, labels: dict[str, str]) -> dict[str, Any]:
    """A static scrape job whose target carries `labels` (as Kubernetes discovery adds)."""
    return {
        "job_name": name,
        "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels}],
    }


def test_external_lag_alert_fires_with_every_pod_down(
    helm: str,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    prometheus_binary()  # fail first, and with the fix, when it is not installed
    topic = topic_factory(2)
    group = unique("g-lag")
    keda_groups = chart_rules(helm, group, topic, "keda")
    exporter_groups = chart_rules(helm, group, topic, "kafka-exporter")
    # The service's own rules come with the first file; the second adds its lag group only.
    (tmp_path / "keda.rules.yaml").write_text(yaml.safe_dump({"groups": keda_groups}))
    (tmp_path / "exporter.rules.yaml").write_text(
        yaml.safe_dump({"groups": [g for g in exporter_groups if "external-lag" in g["name"]]})
    )
    with ExitStack() as stack:
        sim = stack.enter_context(line_simulator())
        settings = make_settings(kafka_bootstrap, topic, group, sim, instance_id="lag-0")
        engine = EngineThread(settings)
        stack.enter_context(engine)
        ops = OpsServer(
            engine.metrics, lambda: engine.engine.ready, host="127.0.0.1", port=0
        ).start()
        stack.callback(ops.stop)
        exporter = LagExporter(
            kafka_bootstrap,
            group,
            [topic],
            KedaTrigger(namespace=NAMESPACE, scaled_object=SCALED_OBJECT, lag_threshold=100),
        ).start()
        stack.callback(exporter.stop)
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [
                str(tmp_path / "keda.rules.yaml"),
                str(tmp_path / "exporter.rules.yaml"),
            ],
            "scrape_configs": [
                scrape_job(
                    "imconnector-consumer",
                    ops.port,
                    {"namespace": NAMESPACE, "pod": "imconnector-consumer-0"},
                ),
                # Kubernetes discovery labels each target with its own namespace.
                scrape_job("keda-operator", exporter.port, {"namespace": "keda"}),
                scrape_job("kafka-exporter", exporter.port, {"namespace": "monitoring"}),
            ],
        }
        prom = PrometheusServer(tmp_path, config).start()
        stack.callback(prom.stop)

        def lag(source: str) -> float | None:
            # One exporter serves both shapes to both jobs: each view reads its own job's
            # series (a sum over both would count the lag twice once both have scraped).
            query = {
                "keda": f'keda_scaler_metrics_value{{job="keda-operator", '
                f'exported_namespace="{NAMESPACE}", scaledObject="{SCALED_OBJECT}"}}',
                "kafka-exporter": f'sum(kafka_consumergroup_lag{{job="kafka-exporter", '
                f'consumergroup="{group}"}})',
            }[source]
            samples = prom.query(query)
            return float(samples[0]["value"][1]) if samples else None

        def firing(**labels: str) -> list[dict[str, Any]]:
            return [
                a for a in prom.firing() if all(a["labels"].get(k) == v for k, v in labels.items())
            ]

        # -- the replica mirrors a first batch and commits: no lag ------------------------
        # Twelve chats: their keys spread over both partitions, so the group commits on
        # each (kafka-exporter reports only partitions with a committed offset).
        first = [chat_event(f"chat-{i}", 1, MessageSent(f"m-{i}", f"text {i}")) for i in range(12)]
        produce(kafka_bootstrap, topic, first, ENCODER)
        wait_until(lambda: engine.outcome("applied") >= len(first), PATIENCE, "the first batch")
        exporter_lag = f'kafka_consumergroup_lag{{job="kafka-exporter", consumergroup="{group}"}}'
        wait_until(
            lambda: [float(s["value"][1]) for s in prom.query(exporter_lag)] == [0.0, 0.0],
            PATIENCE,
            "the exporter to see both partitions committed, without lag",
        )
        wait_until(lambda: lag("keda") == 0, PATIENCE, "KEDA's view to see no lag")
        assert not firing(alertname=ALERT)
        # (Absent may have fired before the first scrape; with the replica up it resolves.)
        wait_until(
            lambda: not firing(alertname="ImconnectorConsumerAbsent"), PATIENCE, "Absent to resolve"
        )

        # -- every pod goes down; events keep coming -------------------------------------
        engine.stop()
        ops.stop()
        backlog = [
            chat_event(f"late-{uuid.uuid4().hex[:6]}", 1, MessageSent("m", "late"))
            for _ in range(THRESHOLD + 7)
        ]
        produce(kafka_bootstrap, topic, backlog, ENCODER)
        # Both views count the backlog (KEDA's cap, 2 partitions x 100, is far above).
        wait_until(lambda: lag("kafka-exporter") == len(backlog), PATIENCE, "kafka-exporter's lag")
        wait_until(lambda: lag("keda") == len(backlog), PATIENCE, "KEDA's lag")

        wait_until(
            lambda: (
                firing(alertname=ALERT, lag_source="keda", namespace=NAMESPACE)
                and firing(
                    alertname=ALERT,
                    lag_source="kafka-exporter",
                    namespace=NAMESPACE,
                    consumergroup=group,
                    topic=topic,
                )
                and firing(alertname="ImconnectorConsumerAbsent", namespace=NAMESPACE)
            ),
            PATIENCE,
            "the external lag alerts (both sources) and Absent to fire",
        )
        (keda_alert,) = firing(alertname=ALERT, lag_source="keda")
        assert keda_alert["labels"]["scaledObject"] == SCALED_OBJECT
        assert keda_alert["labels"]["metric"] == f"s0-kafka-{topic}"
        assert float(keda_alert["value"]) == len(backlog)
        unhealthy = [
            (r["name"], r.get("lastError")) for r in prom.alert_rules() if r["health"] != "ok"
        ]
        assert not unhealthy, f"rules failing to evaluate: {unhealthy}"
