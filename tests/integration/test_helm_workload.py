"""The chart's workload: Deployment or StatefulSet, group membership, rollouts, disruption,
resources, and the settings each kind hands the service.

Rendered with helm template (tests/integration/chart.py); the settings a pod would get are
loaded by the service's own code in a subprocess, so the chart and the service agree on
names and meanings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.integration.chart import (
    CHART,
    FULLNAME,
    K8S_VERSIONS,
    REPO,
    VALUE_SETS,
    by_kind,
    container,
    one,
    pod_env,
    render,
    try_template,
    values_of,
    workload,
)

ALL_SETS = pytest.mark.parametrize("value_set", list(VALUE_SETS))


def client_identity(env: dict[str, str]) -> dict[str, Any]:
    """Settings and librdkafka identities the service derives from a pod's environment."""
    probe = (
        "import json\n"
        "from consumer.settings import load_settings\n"
        "from consumer.kafka.clients import consumer_config, producer_config\n"
        "s = load_settings()\n"
        "c, p = consumer_config(s), producer_config(s)\n"
        "print(json.dumps({'instance_id': s.instance_id,\n"
        "  'static': s.kafka.static_membership,\n"
        "  'servers': s.kafka.bootstrap_servers,\n"
        "  'group_instance_id': c.get('group.instance.id'),\n"
        "  'transactional_id': p['transactional.id']}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMCONNECTOR_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


# --- Deployment or StatefulSet ------------------------------------------------------------


def test_deployment_replicas_are_dynamic_group_members(helm: str) -> None:
    docs = render(helm, "defaults")
    assert workload(docs)["kind"] == "Deployment"
    assert not by_kind(docs, "StatefulSet")
    config = one(docs, "ConfigMap", FULLNAME)["data"]
    assert config["IMCONNECTOR_KAFKA__STATIC_MEMBERSHIP"] == "false"
    # The pod name is random: it must not become a group.instance.id (a ghost member would
    # hold the old pod's partitions for session.timeout.ms at every rollout).
    assert "IMCONNECTOR_INSTANCE_ID" not in {
        e["name"] for e in container(workload(docs)).get("env", [])
    }
    identity = client_identity(pod_env(docs, "rel-imconnector-consumer-7d9f8-x2x4q"))
    assert identity["static"] is False
    assert identity["group_instance_id"] is None


def test_statefulset_replicas_are_static_members_named_after_their_pod(helm: str) -> None:
    docs = render(helm, "statefulset")
    sts = workload(docs)
    assert sts["kind"] == "StatefulSet"
    assert not by_kind(docs, "Deployment")
    env = {e["name"]: e for e in container(sts)["env"]}
    assert env["IMCONNECTOR_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert (
        one(docs, "ConfigMap", FULLNAME)["data"]["IMCONNECTOR_KAFKA__STATIC_MEMBERSHIP"] == "true"
    )
    pod = f"{FULLNAME}-2"
    identity = client_identity(pod_env(docs, pod))
    assert identity["instance_id"] == pod
    assert identity["static"] is True
    # Both identities survive a restart of the pod: same name, same ids.
    assert identity["group_instance_id"] == f"imconnector-consumer-{pod}"
    assert identity["transactional_id"] == f"imconnector-imconnector-consumer-{pod}"
    assert identity["servers"] == "kafka-0.kafka-headless:9092,kafka-1.kafka-headless:9092"


def test_statefulset_is_governed_by_a_headless_service(helm: str) -> None:
    docs = render(helm, "statefulset")
    sts = workload(docs)
    service = one(docs, "Service")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert (
        service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    # KEDA adds and removes pods together rather than one readiness wait at a time.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert "replicas" not in sts["spec"]  # KEDA owns it
    assert one(docs, "ScaledObject")["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"


def test_a_headless_service_must_be_cluster_ip(helm: str) -> None:
    result = try_template(helm, VALUE_SETS["statefulset"], sets=("service.type=NodePort",))
    assert result.returncode != 0
    assert "service.type NodePort" in result.stderr
    assert "headless" in result.stderr


@ALL_SETS
def test_not_ready_replicas_stay_scrape_targets(helm: str, value_set: str) -> None:
    service = one(render(helm, value_set), "Service")
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_unknown_workload_kind_is_refused(helm: str) -> None:
    result = try_template(helm, VALUE_SETS["defaults"], sets=("workload.kind=DaemonSet",))
    assert result.returncode != 0
    assert "'/workload/kind': value must be one of 'Deployment', 'StatefulSet'" in result.stderr


# --- rollouts and disruption ------------------------------------------------------------


@ALL_SETS
def test_rollout_keeps_every_partition_consumed(helm: str, value_set: str) -> None:
    """A Deployment surges one pod and removes none before it is ready; readiness is
    /readyz, which the engine reports for a member without partitions too (joined,
    restored, not draining), so with replicas == partitions the surge pod becomes ready
    and the rollout completes instead of stalling."""
    docs = render(helm, value_set)
    w = workload(docs)
    probe = container(w)["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "http"}
    if w["kind"] == "Deployment":
        assert w["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
    else:
        assert w["spec"]["updateStrategy"]["type"] == "RollingUpdate"


@ALL_SETS
def test_pdb_lets_a_drain_evict_unhealthy_pods(helm: str, value_set: str) -> None:
    pdb = one(render(helm, value_set), "PodDisruptionBudget")["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["maxUnavailable"] == 1


def test_kube_version_floor_is_the_one_validated() -> None:
    """kubeVersion's floor is the oldest schema the manifests are validated against, and
    it knows unhealthyPodEvictionPolicy (on by default since 1.27)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={K8S_VERSIONS[0]}.0-0"


# --- resources ----------------------------------------------------------------------------


@ALL_SETS
def test_cpu_request_matches_measured_use_and_no_cpu_limit(helm: str, value_set: str) -> None:
    resources = container(workload(render(helm, value_set)))["resources"]
    # 0.85 cores at 9,500 records/s measured; a quiet replica uses a few millicores.
    assert resources["requests"]["cpu"] == "250m"
    # A CFS quota would throttle the poll loop and the commits in 100 ms slices.
    assert "cpu" not in resources.get("limits", {})
    assert resources["limits"]["memory"] == "512Mi"
    assert resources["requests"]["memory"] == "256Mi"


# --- bootstrap servers on the command line --------------------------------------------------


def test_comma_separated_servers_in_set_is_helms_parse_error(helm: str) -> None:
    """Why the README never shows it: --set splits at commas."""
    result = try_template(
        helm, VALUE_SETS["defaults"], sets=("kafka.bootstrapServers=a:9092,b:9092",)
    )
    assert result.returncode != 0
    assert 'key "b:9092" has no value' in result.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ("--set", "kafka.bootstrapServers={a:9092,b:9092}"),
        ("--set-literal", "kafka.bootstrapServers=a:9092,b:9092"),
        ("--set", "kafka.bootstrapServers=a:9092\\,b:9092"),
        ("--set-json", 'kafka.bootstrapServers=["a:9092","b:9092"]'),
    ],
    ids=["list", "set-literal", "escaped-comma", "set-json"],
)
def test_servers_list_reaches_service_and_keda(helm: str, extra: tuple[str, ...]) -> None:
    result = try_template(helm, VALUE_SETS["keda"], extra=(*extra, "--set", "kafka.partitions=6"))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    config = one(docs, "ConfigMap", FULLNAME)["data"]
    assert config["IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "a:9092,b:9092"
    for trigger in one(docs, "ScaledObject")["spec"]["triggers"]:
        assert trigger["metadata"]["bootstrapServers"] == "a:9092,b:9092"


def test_servers_list_items_need_a_port(helm: str) -> None:
    result = try_template(
        helm, VALUE_SETS["defaults"], extra=("--set", "kafka.bootstrapServers={a,b:9092}")
    )
    assert result.returncode != 0
    assert "bootstrapServers" in result.stderr


# --- rate limits and KEDA -----------------------------------------------------------------


def test_rate_share_is_only_an_explicit_override(helm: str) -> None:
    """Each replica derives its share of a portal's limit from its assignment; the chart
    sets RATE_SHARE only where the values pin it."""
    docs = render(helm, "all-toggles")
    config = one(docs, "ConfigMap", FULLNAME)["data"]
    shares = {k: v for k, v in config.items() if k.endswith("__RATE_SHARE")}
    values = values_of("all-toggles")
    pinned = {k for k, p in values["portals"].items() if "rateShare" in p}
    assert pinned == {"b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8"}
    assert shares == {"IMCONNECTOR_PORTALS__B3C4D5E6F7A8B9C0D1E2F3A4B5C6D7E8__RATE_SHARE": "0.5"}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "rateShare: 0" not in yaml.safe_dump(defaults)  # no static share by default


def test_keda_floor_above_the_ceiling_is_refused(helm: str) -> None:
    result = try_template(helm, VALUE_SETS["keda"], sets=("keda.minReplicaCount=7",))
    assert result.returncode != 0
    assert "keda.minReplicaCount 7 is above the replica ceiling 6" in result.stderr


# --- scraping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "timeout", "ok"),
    [("30s", "10s", True), ("1m", "45s", True), ("30s", "45s", False), ("1m30s", "1m31s", False)],
)
def test_scrape_timeout_never_exceeds_the_interval(
    helm: str, interval: str, timeout: str, ok: bool
) -> None:
    result = try_template(
        helm,
        VALUE_SETS["defaults"],
        sets=(
            "metrics.serviceMonitor.enabled=true",
            f"metrics.serviceMonitor.interval={interval}",
            f"metrics.serviceMonitor.scrapeTimeout={timeout}",
        ),
    )
    assert (result.returncode == 0) is ok, result.stderr
    if ok:
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)
    else:
        assert f"scrapeTimeout {timeout} is longer than interval {interval}" in result.stderr


def test_servicemonitor_scrapes_each_pod_once_with_push_inbound(helm: str) -> None:
    """In push mode a second Service fronts the same http port: the ServiceMonitor must
    select the metrics Service only, or every series would be scraped twice."""
    result = try_template(
        helm,
        VALUE_SETS["defaults"],
        sets=("metrics.serviceMonitor.enabled=true", "inbound.mode=push"),
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    services = by_kind(docs, "Service")
    assert len(services) == 2
    selector = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [FULLNAME]
