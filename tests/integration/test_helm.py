"""The Helm chart: lint, render over several value sets, validate against Kubernetes schemas.

Needs the helm CLI (ops/tools/install-helm.sh puts it in ops/.tools/bin; scripts/bootstrap
runs it). Rendered manifests are checked with kubernetes-validate (strict) for the
chart's minimum and the newest Kubernetes; CRDs (ServiceMonitor, PrometheusRule,
ScaledObject, TriggerAuthentication) have no schema there, so their key fields are
asserted instead. The Dockerfile is checked here too, against what the chart expects of
the image (user, port, entrypoint).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.chart import (
    CHART,
    CI_VALUES,
    CRD_KINDS,
    FULLNAME,
    K8S_VERSIONS,
    NAMESPACE,
    RELEASE,
    REPO,
    VALUE_SETS,
    WORKLOAD_KINDS,
    by_kind,
    container,
    one,
    render,
    run_helm,
    secret_data,
    servers_string,
    try_template,
    values_of,
    workload,
)

CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
SECRET_SENTINELS = (
    "consumer-sasl-user-sentinel",
    "sasl-password-sentinel-7f3a",
    "client-secret-sentinel-91c2",
    "access-token-sentinel-55aa",
    "refresh-token-sentinel-66bb",
    "client-secret-sentinel-b7e4",
    "extra-secret-sentinel-c0ffee",
    "MIIBszCCAVmgAwIBAgIUcaSentinelCertificateBody",
)


ALL_SETS = pytest.mark.parametrize("value_set", list(VALUE_SETS))


# --- lint and schema -------------------------------------------------------------------


@ALL_SETS
def test_helm_lint_strict_passes(helm: str, value_set: str) -> None:
    result = run_helm(
        helm, "lint", "--strict", str(CHART), "-f", str(CI_VALUES / VALUE_SETS[value_set])
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_lint_without_bootstrap_servers_names_the_value(helm: str) -> None:
    result = run_helm(helm, "lint", str(CHART))
    assert result.returncode != 0
    assert "bootstrapServers" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("kafka.bootstrapServer=typo:9092",), "additional properties 'bootstrapServer'"),
        (("kafka.securityProtocol=TLS",), "securityProtocol"),
        (("image.tag=latest",), "tag"),
        (("kafka.partitions=0",), "partitions"),
        (
            (
                "portals.Bad_Name.restUrl=https://x.bitrix24.com/rest/",
                "portals.Bad_Name.clientId=local.1",
            ),
            "invalid propertyName 'Bad_Name'",
        ),
    ],
)
def test_schema_rejects_bad_values(helm: str, sets: tuple[str, ...], message: str) -> None:
    result = try_template(helm, VALUE_SETS["defaults"], sets=sets)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_schema_and_values_yaml_describe_the_same_keys() -> None:
    """Every key of a strict schema object has a documented default in values.yaml."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    walked = 0

    def walk(node: dict[str, Any], values: Any, path: str) -> None:
        nonlocal walked
        if not isinstance(values, dict) or not values or "properties" not in node:
            return
        if node.get("additionalProperties") is False:
            assert set(values) == set(node["properties"]), path or "(top level)"
        for key, sub in node["properties"].items():
            walked += 1
            walk(sub, values.get(key), f"{path}.{key}")

    walk(schema, defaults, "")
    assert walked > 100


# --- Kubernetes schemas ----------------------------------------------------------------


@ALL_SETS
def test_every_manifest_is_valid_kubernetes(helm: str, value_set: str) -> None:
    docs = render(helm, value_set)
    checked = 0
    for doc in docs:
        assert doc["metadata"]["name"], doc
        if doc["kind"] in CRD_KINDS:
            continue  # no schema in kubernetes-validate; see the CRD tests below
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Service", "ServiceAccount"} <= kinds
    assert len(kinds & WORKLOAD_KINDS) == 1
    assert checked >= 5


def test_all_toggles_render_every_resource(helm: str) -> None:
    kinds = sorted(doc["kind"] for doc in render(helm, "all-toggles"))
    assert kinds == sorted(
        [
            "ConfigMap",  # settings
            "ConfigMap",  # Grafana dashboard
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PrometheusRule",
            "ScaledObject",
            "Secret",  # settings
            "Secret",  # Kafka CA
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "TriggerAuthentication",
        ]
    )


def test_defaults_render_only_the_core(helm: str) -> None:
    kinds = sorted(doc["kind"] for doc in render(helm, "defaults"))
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
    ]


@ALL_SETS
def test_standard_labels_everywhere_and_no_hardcoded_namespace(helm: str, value_set: str) -> None:
    for doc in render(helm, value_set):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "imconnector-consumer"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"imconnector-consumer-{CHART_VERSION}"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        if doc["kind"] not in {"ServiceMonitor", "PrometheusRule", "ConfigMap"}:
            assert "namespace" not in doc["metadata"], doc["kind"]


# --- Deployment ------------------------------------------------------------------------


@ALL_SETS
def test_pod_runs_hardened(helm: str, value_set: str) -> None:
    pod = workload(render(helm, value_set))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no <SERVICE>_PORT vars among IMCONNECTOR_*
    sc = container({"spec": {"template": {"spec": pod}}})["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["runAsGroup"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root filesystem needs a writable /tmp.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@ALL_SETS
def test_probes_and_port(helm: str, value_set: str) -> None:
    c = container(workload(render(helm, value_set)))
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert c["args"] == ["run"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert "enabled" not in c[probe]
        assert c[probe]["periodSeconds"] >= 1
    # The startup probe must cover a slow start before liveness may kill the pod.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_custom_probe_replaces_the_generated_one(helm: str) -> None:
    docs = render(
        helm,
        "defaults",
        sets=("customLivenessProbe.tcpSocket.port=http", "startupProbe.enabled=false"),
    )
    c = container(workload(docs))
    assert c["livenessProbe"] == {"tcpSocket": {"port": "http"}}
    assert "startupProbe" not in c


@ALL_SETS
def test_selectors_match_pod_labels(helm: str, value_set: str) -> None:
    docs = render(helm, value_set)
    deployment = workload(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    # Selectors are immutable: only name and instance, never the chart version.
    assert selector == {
        "app.kubernetes.io/name": "imconnector-consumer",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert selector.items() <= pod_labels.items()
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for policy in by_kind(docs, "NetworkPolicy"):
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    for monitor in by_kind(docs, "ServiceMonitor"):
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
    for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


@ALL_SETS
def test_termination_grace_is_drain_grace_plus_margin(helm: str, value_set: str) -> None:
    values = values_of(value_set)
    docs = render(helm, value_set)
    grace = values["shutdown"]["graceSeconds"]
    expected = grace + values["shutdown"]["marginSeconds"]
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == expected
    config = one(docs, "ConfigMap", FULLNAME)["data"]
    assert config["IMCONNECTOR_SHUTDOWN_GRACE_S"] == str(grace)


def test_termination_grace_follows_the_values(helm: str) -> None:
    docs = render(helm, "defaults", sets=("shutdown.graceSeconds=90", "shutdown.marginSeconds=5"))
    assert workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 95


@ALL_SETS
def test_env_comes_from_configmap_and_secret(helm: str, value_set: str) -> None:
    values = values_of(value_set)
    docs = render(helm, value_set)
    c = container(workload(docs))
    assert c["envFrom"] == [
        {"configMapRef": {"name": FULLNAME}},
        {"secretRef": {"name": values["existingSecret"] or FULLNAME}},
    ]
    one(docs, "ConfigMap", FULLNAME)
    secrets = {s["metadata"]["name"] for s in by_kind(docs, "Secret")}
    if values["existingSecret"]:
        # The chart neither creates nor shadows a Secret it does not own.
        assert FULLNAME not in secrets
        assert values["existingSecret"] not in secrets
    else:
        assert FULLNAME in secrets


@ALL_SETS
def test_replicas_only_without_keda(helm: str, value_set: str) -> None:
    values = values_of(value_set)
    spec = workload(render(helm, value_set))["spec"]
    if values["keda"]["enabled"]:
        assert "replicas" not in spec
    else:
        assert spec["replicas"] == values["replicaCount"]


@ALL_SETS
def test_checksum_annotations_present(helm: str, value_set: str) -> None:
    annotations = workload(render(helm, value_set))["spec"]["template"]["metadata"]["annotations"]
    for key in ("checksum/config", "checksum/secret"):
        assert re.fullmatch(r"[0-9a-f]{64}", annotations[key]), key


def test_checksums_change_with_what_they_cover(helm: str) -> None:
    def checksums(*sets: str) -> tuple[str, str]:
        annotations = workload(render(helm, "defaults", sets=sets))["spec"]["template"]["metadata"][
            "annotations"
        ]
        return annotations["checksum/config"], annotations["checksum/secret"]

    base_config, base_secret = checksums()
    config, secret = checksums("logging.level=DEBUG")
    assert config != base_config
    assert secret == base_secret
    config, secret = checksums("kafka.sasl.password=rotated")
    assert config == base_config
    assert secret != base_secret


def test_kafka_ca_mounted_where_the_config_points(helm: str) -> None:
    for value_set, secret_name, key in (
        ("all-toggles", f"{FULLNAME}-kafka-ca", "ca.crt"),
        ("existing-secret", "kafka-cluster-ca", "ca.pem"),
    ):
        docs = render(helm, value_set)
        location = one(docs, "ConfigMap", FULLNAME)["data"]["IMCONNECTOR_KAFKA__SSL_CA_LOCATION"]
        pod = workload(docs)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")
        assert volume["secret"]["secretName"] == secret_name
        assert volume["secret"]["items"] == [{"key": key, "path": Path(location).name}]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-ca")
        assert mount["mountPath"] == str(Path(location).parent)
        assert mount["readOnly"] is True


# --- ConfigMap and Secret --------------------------------------------------------------


def test_configmap_carries_typed_and_generic_settings(helm: str) -> None:
    data = one(render(helm, "all-toggles"), "ConfigMap", FULLNAME)["data"]
    portal = "IMCONNECTOR_PORTALS__B3C4D5E6F7A8B9C0D1E2F3A4B5C6D7E8__"
    assert data["IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS"].startswith("kafka-0.kafka-headless:9093")
    assert data["IMCONNECTOR_SOURCE_TOPICS"] == "chat-events,chat-events-priority"
    assert data["IMCONNECTOR_GROUP_ID"] == "imconnector-consumer"
    assert data["IMCONNECTOR_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data[portal + "REST_URL"] == "https://example.bitrix24.com/rest/"
    assert data[portal + "RATE_SHARE"] == "0.5"
    assert data["IMCONNECTOR_ENGINE__BATCH_SIZE"] == "100"
    # librdkafka pass-through: strings only, whole numbers not in exponent form.
    assert json.loads(data["IMCONNECTOR_KAFKA__CONFIG"]) == {
        "auto.offset.reset": "earliest",
        "enable.partition.eof": "false",
        "fetch.max.bytes": "52428800",
    }
    assert all(isinstance(value, str) for value in data.values())


def test_secrets_never_reach_a_configmap(helm: str) -> None:
    docs = render(helm, "all-toggles")
    configmaps = yaml.safe_dump([d for d in docs if d["kind"] == "ConfigMap"])
    secrets = {**secret_data(docs, FULLNAME), **secret_data(docs, f"{FULLNAME}-kafka-ca")}
    for sentinel in SECRET_SENTINELS:
        encoded = base64.b64encode(sentinel.encode()).decode().rstrip("=")
        assert sentinel not in configmaps, sentinel
        assert encoded not in configmaps, sentinel
        assert any(sentinel in value for value in secrets.values()), sentinel
    portal = "IMCONNECTOR_PORTALS__B3C4D5E6F7A8B9C0D1E2F3A4B5C6D7E8__"
    assert secrets[portal + "CLIENT_SECRET"] == "client-secret-sentinel-91c2"
    assert secrets[portal + "REFRESH_TOKEN"] == "refresh-token-sentinel-66bb"
    assert secrets["IMCONNECTOR_KAFKA__SASL_PASSWORD"] == "sasl-password-sentinel-7f3a"
    # Nothing else about secrets leaks through the rendered Deployment either.
    deployment = yaml.safe_dump(workload(docs))
    assert not any(sentinel in deployment for sentinel in SECRET_SENTINELS)


@pytest.mark.parametrize(
    "sets",
    [
        ("config.IMCONNECTOR_PORTALS__P__CLIENT_SECRET=oops",),
        ("config.IMCONNECTOR_KAFKA__SASL_PASSWORD=oops",),
        ("kafka.librdkafka.sasl\\.password=oops",),
    ],
)
def test_secret_looking_config_is_refused(helm: str, sets: tuple[str, ...]) -> None:
    result = try_template(helm, VALUE_SETS["defaults"], sets=sets)
    assert result.returncode != 0
    assert "looks like a secret" in result.stderr
    assert "oops" not in result.stdout


def test_existing_secret_refuses_inline_secrets(helm: str) -> None:
    result = try_template(helm, VALUE_SETS["existing-secret"], sets=("kafka.sasl.password=inline",))
    assert result.returncode != 0
    assert "IMCONNECTOR_KAFKA__SASL_PASSWORD" in result.stderr
    assert "existingSecret" in result.stderr


def test_rendered_settings_load_in_the_service(helm: str) -> None:
    """ConfigMap + Secret, as envFrom gives them, pass the service's own validation."""
    docs = render(helm, "all-toggles")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMCONNECTOR_")}
    env.update(one(docs, "ConfigMap", FULLNAME)["data"])
    env.update(secret_data(docs, FULLNAME))
    probe = (
        "import json\n"
        "from consumer.settings import load_settings\n"
        "s = load_settings()\n"
        "print(json.dumps({'servers': s.kafka.bootstrap_servers, 'topics': s.source_topics,\n"
        "  'group': s.group_id, 'grace': s.shutdown_grace_s, 'port': s.http_port,\n"
        "  'rdkafka': s.kafka.librdkafka(),\n"
        "  'portals': {k: [p.rest_url, p.client_id, p.client_secret.get_secret_value(),\n"
        "               p.rate_share] for k, p in s.portals.items()}}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["topics"] == ["chat-events", "chat-events-priority"]
    assert loaded["group"] == "imconnector-consumer"
    assert loaded["grace"] == 20
    assert loaded["port"] == 9000
    assert loaded["rdkafka"]["sasl.password"] == "sasl-password-sentinel-7f3a"
    assert loaded["rdkafka"]["ssl.ca.location"] == "/etc/imconnector/kafka-ca/ca.crt"
    assert loaded["rdkafka"]["auto.offset.reset"] == "earliest"
    assert loaded["portals"] == {
        "b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8": [
            "https://example.bitrix24.com/rest/",
            "local.0123456789abcd.12345678",
            "client-secret-sentinel-91c2",
            0.5,
        ],
        "second.bitrix24.eu": [
            "https://second.bitrix24.eu/rest/",
            "local.fedcba9876543210.87654321",
            "client-secret-sentinel-b7e4",
            None,  # no fixed share: derived from the partitions a replica owns
        ],
    }


# --- KEDA ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_set", "sets", "expected_max"),
    [
        ("keda", (), 6),  # asked for 20, capped at kafka.partitions=6
        ("keda", ("keda.maxReplicaCount=4",), 4),
        ("keda", ("keda.maxReplicaCount=0",), 6),  # 0 = the partition count
        ("all-toggles", (), 24),
        ("statefulset", (), 6),
    ],
)
def test_scaledobject_caps_replicas_at_partitions(
    helm: str, value_set: str, sets: tuple[str, ...], expected_max: int
) -> None:
    docs = render(helm, value_set, sets=sets)
    values = values_of(value_set)
    scaled = one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["maxReplicaCount"] == expected_max
    assert spec["minReplicaCount"] == values["keda"]["minReplicaCount"] >= 1
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": values["workload"]["kind"],
        "name": workload(docs)["metadata"]["name"],
    }
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert [t["metadata"]["topic"] for t in spec["triggers"]] == values["kafka"]["topics"]
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == servers_string(values)
        assert meta["consumerGroup"] == values["kafka"]["groupId"]
        assert meta["offsetResetPolicy"] == values["kafka"]["autoOffsetReset"]
        assert meta["lagThreshold"] == str(values["keda"]["lagThreshold"])
        assert meta["allowIdleConsumers"] == "false"
        assert all(isinstance(v, str) for v in meta.values())


def test_keda_authenticates_with_the_consumers_secret(helm: str) -> None:
    docs = render(helm, "all-toggles")
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "ca"}
    for ref in refs.values():
        assert ref["key"] in secret_data(docs, ref["name"])


def test_keda_without_auth_needs_no_trigger_authentication(helm: str) -> None:
    docs = render(helm, "keda")
    assert not by_kind(docs, "TriggerAuthentication")
    assert all("authenticationRef" not in t for t in one(docs, "ScaledObject")["spec"]["triggers"])


# --- monitoring CRDs and the rest ------------------------------------------------------


def test_servicemonitor_scrapes_the_metrics_port(helm: str) -> None:
    docs = render(helm, "all-toggles")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == one(docs, "Service")["spec"]["ports"][0]["name"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"


def test_prometheusrule_is_the_ops_rules_files(helm: str) -> None:
    """The ops/alerts rules, with the release's namespace in each expression and label, the
    runbook links made browsable, and the external lag group of the source KEDA gives."""
    docs = render(helm, "all-toggles")
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    expected = []
    base = "https://git.example.com/imconnector-consumer/blob/main/ops/runbooks/"
    for name in ("imconnector-consumer.rules.yaml", "imconnector-consumer-external-lag.rules.yaml"):
        for group in yaml.safe_load((REPO / "ops/alerts" / name).read_text())["groups"]:
            if group["name"].endswith("-kafka-exporter"):
                continue  # keda.enabled: KEDA is the lag source
            for r in group["rules"]:
                r["annotations"]["runbook_url"] = base + Path(r["annotations"]["runbook_url"]).name
                r["labels"]["namespace"] = NAMESPACE
                r["expr"] = (
                    r["expr"]
                    .replace('namespace=~".*"', f'namespace="{NAMESPACE}"')
                    .replace('exported_namespace=~".*"', f'exported_namespace="{NAMESPACE}"')
                    .replace('scaledObject="imconnector-consumer"', f'scaledObject="{FULLNAME}"')
                )
            expected.append(group)
    assert rule["spec"]["groups"] == expected


def test_prometheusrule_follows_the_job_name(helm: str) -> None:
    docs = render(
        helm, "all-toggles", sets=("nameOverride=imc", "metrics.prometheusRule.runbookBaseUrl=")
    )
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    exprs = "\n".join(r["expr"] for r in rules)
    assert 'job="imc"' in exprs
    assert 'job="imconnector-consumer"' not in exprs
    assert all(r["annotations"]["runbook_url"].startswith("ops/runbooks/") for r in rules)


def test_grafana_dashboard_configmap(helm: str) -> None:
    docs = render(helm, "all-toggles")
    dashboard = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Kafka"
    (payload,) = dashboard["data"].values()
    committed = (REPO / "ops/dashboards/imconnector-consumer.json").read_text()
    assert json.loads(payload) == json.loads(committed)


def test_chart_files_are_copies_of_ops(helm: str) -> None:
    for name, source in (
        ("imconnector-consumer.rules.yaml", "ops/alerts/imconnector-consumer.rules.yaml"),
        ("imconnector-consumer.json", "ops/dashboards/imconnector-consumer.json"),
    ):
        copy = (CHART / "files" / name).read_bytes()
        assert copy == (REPO / source).read_bytes(), (
            f"helm/imconnector-consumer/files/{name} is stale: run ops/tools/sync-chart-files.sh"
        )


def test_networkpolicy_opens_only_what_is_needed(helm: str) -> None:
    policy = one(render(helm, "all-toggles"), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = [
        sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in policy["egress"]
    ]
    assert egress_ports == [
        [(53, "TCP"), (53, "UDP")],
        [(9092, "TCP"), (9093, "TCP"), (9094, "TCP")],
        [(443, "TCP")],
        [(443, "TCP")],  # the Schema Registry, https://schema-registry.example.com
    ]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_pdb_limits_disruption_to_one_pod(helm: str) -> None:
    pdb = one(render(helm, "defaults"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    docs = render(helm, "defaults", sets=("pdb.minAvailable=50%",))
    spec = one(docs, "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == "50%"
    assert "maxUnavailable" not in spec


def test_image_reference(helm: str) -> None:
    c = container(workload(render(helm, "all-toggles")))
    assert c["image"] == "registry.example.com/imconnector-consumer:0.1.0"
    digest = "sha256:" + "ab" * 32
    docs = render(helm, "defaults", sets=(f"image.digest={digest}",))
    assert container(workload(docs))["image"] == f"imconnector-consumer@{digest}"


# --- the image the chart runs ----------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_builds_what_the_chart_expects(helm: str) -> None:
    instructions = dockerfile_instructions()
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    assert len(stages) >= 2, "multi-stage build"
    global_args = dict(
        rest.split("=", 1)
        for k, rest in instructions[: instructions.index(("FROM", stages[0][0][1]))]
        if k == "ARG"
    )
    # Pinned by digest (tests/unit/test_packaging.py checks the bump command is there).
    assert re.fullmatch(
        r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", global_args["PYTHON_IMAGE"]
    )
    assert [stage[0][1] for stage in stages] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE} AS runtime",
    ], "builder and runtime share the base (the venv points at its interpreter)"
    final = stages[-1]

    def last(keyword: str) -> str:
        return [rest for k, rest in final if k == keyword][-1]

    pod = one(render(helm, "defaults"), "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # USER must be numeric so the kubelet can verify runAsNonRoot.
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert last("USER") == user
    assert last("EXPOSE") == str(c["ports"][0]["containerPort"])
    assert json.loads(last("ENTRYPOINT")) == ["imconnector-consumer"]
    assert json.loads(last("CMD")) == c["args"]
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    labels = " ".join(rest for k, rest in final if k == "LABEL")
    for label in ("title", "version", "revision", "source", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    assert all(k not in {"RUN"} or "pip" not in rest for k, rest in final), "no pip at runtime"
    builds = " ".join(rest for k, rest in stages[0] if k == "RUN")
    assert "pip install --require-hashes --no-deps -r requirements.lock" in builds
    assert "pip install --no-deps ." in builds
    assert "compileall" in builds
    # The entrypoint the image runs is the console script pyproject.toml declares.
    assert 'imconnector-consumer = "consumer.cli:main"' in (REPO / "pyproject.toml").read_text()


def test_dockerignore_allows_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: exclude everything first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "requirements.lock", "README.md", "consumer", "schemas"}
    copied = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(part.rstrip("/*") for part in rest.split()[:-1])
    assert copied == allowed
    for path in ("pyproject.toml", "requirements.lock", "consumer", "schemas"):
        assert (REPO / path).exists(), path
