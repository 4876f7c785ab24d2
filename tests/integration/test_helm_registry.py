"""The chart's Schema Registry values: any http(s) URL, basic or bearer auth and a CA bundle,
inline (for tests) or from Secrets the chart does not manage, rendered to the service's
settings: `IMCONNECTOR_SCHEMA_REGISTRY_*` variables, and files named after them in the
secrets directory (`IMCONNECTOR_SECRETS_DIR`) for keys of an existing Secret.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.chart import (
    FULLNAME,
    K8S_VERSIONS,
    VALUE_SETS,
    container,
    one,
    secret_data,
    try_template,
    workload,
)

URL = "http://schema-registry.kafka.svc:8081"
PASSWORD = "registry-password-sentinel-4d1e"
TOKEN = "registry-token-sentinel-90ab"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBregistrySentinelCA\n-----END CERTIFICATE-----\n"


def render_with(helm: str, *sets: str) -> list[dict[str, Any]]:
    result = try_template(helm, VALUE_SETS["defaults"], sets=(f"schemaRegistry.url={URL}", *sets))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    return docs


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", FULLNAME)["data"]
    return data


def mounted_file(docs: list[dict[str, Any]], path: str) -> tuple[str, str]:
    """(Secret name, key) that the pod shows at `path`; fails when nothing is mounted there."""
    pod = workload(docs)["spec"]["template"]["spec"]
    target = PurePosixPath(path)
    for mount in container(workload(docs))["volumeMounts"]:
        if target.parent != PurePosixPath(mount["mountPath"]):
            continue
        assert mount.get("readOnly") is True
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        sources = (
            [s["secret"] for s in volume["projected"]["sources"]]
            if "projected" in volume
            else [{"name": volume["secret"]["secretName"], **volume["secret"]}]
        )
        for source in sources:
            for item in source["items"]:
                if item["path"] == target.name:
                    return source["name"], item["key"]
    raise AssertionError(f"nothing mounted at {path}")


def test_plain_http_registry_is_accepted(helm: str) -> None:
    """The https-only rule is for Bitrix24 URLs; a cluster-internal registry is http."""
    docs = render_with(helm)
    data = config(docs)
    assert data["IMCONNECTOR_SCHEMA_REGISTRY_URL"] == URL
    assert not {
        k
        for k in data
        if k.startswith("IMCONNECTOR_SCHEMA_REGISTRY_") and k.endswith(("USERNAME", "CA_LOCATION"))
    }
    assert "IMCONNECTOR_SECRETS_DIR" not in data


def test_basic_auth_from_an_existing_secret_is_mounted_as_files(helm: str) -> None:
    docs = render_with(
        helm,
        "schemaRegistry.auth.method=basic",
        "schemaRegistry.auth.existingSecret=registry-credentials",
        "schemaRegistry.auth.usernameKey=api-key",
        "schemaRegistry.auth.passwordKey=api-secret",
    )
    data = config(docs)
    secrets_dir = data["IMCONNECTOR_SECRETS_DIR"]
    assert mounted_file(docs, f"{secrets_dir}/IMCONNECTOR_SCHEMA_REGISTRY_USERNAME") == (
        "registry-credentials",
        "api-key",
    )
    assert mounted_file(docs, f"{secrets_dir}/IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD") == (
        "registry-credentials",
        "api-secret",
    )
    # Neither credential is an environment variable as well.
    assert "IMCONNECTOR_SCHEMA_REGISTRY_USERNAME" not in data
    assert "IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD" not in secret_data(docs, FULLNAME)
    env_names = {e["name"] for e in container(workload(docs)).get("env", [])}
    assert not {n for n in env_names if n.startswith("IMCONNECTOR_SCHEMA_REGISTRY_")}


def test_basic_auth_user_inline_and_password_from_secret(helm: str) -> None:
    docs = render_with(
        helm,
        "schemaRegistry.auth.method=basic",
        "schemaRegistry.auth.username=consumer",
        "schemaRegistry.auth.existingSecret=registry-credentials",
    )
    data = config(docs)
    assert data["IMCONNECTOR_SCHEMA_REGISTRY_USERNAME"] == "consumer"
    assert mounted_file(
        docs, f"{data['IMCONNECTOR_SECRETS_DIR']}/IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD"
    ) == ("registry-credentials", "password")


def test_inline_basic_auth_goes_to_the_charts_secret(helm: str) -> None:
    docs = render_with(
        helm,
        "schemaRegistry.auth.method=basic",
        "schemaRegistry.auth.username=consumer",
        f"schemaRegistry.auth.password={PASSWORD}",
    )
    assert config(docs)["IMCONNECTOR_SCHEMA_REGISTRY_USERNAME"] == "consumer"
    assert secret_data(docs, FULLNAME)["IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD"] == PASSWORD
    assert PASSWORD not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])


def test_bearer_token_from_an_existing_secret(helm: str) -> None:
    docs = render_with(
        helm,
        "schemaRegistry.auth.method=bearer",
        "schemaRegistry.auth.existingSecret=registry-token",
        "schemaRegistry.auth.logicalCluster=lsrc-abc123",
    )
    data = config(docs)
    assert data["IMCONNECTOR_SCHEMA_REGISTRY_LOGICAL_CLUSTER"] == "lsrc-abc123"
    assert mounted_file(
        docs, f"{data['IMCONNECTOR_SECRETS_DIR']}/IMCONNECTOR_SCHEMA_REGISTRY_BEARER_TOKEN"
    ) == ("registry-token", "token")
    assert "IMCONNECTOR_SCHEMA_REGISTRY_USERNAME" not in data


def test_inline_bearer_token_goes_to_the_charts_secret(helm: str) -> None:
    docs = render_with(
        helm, "schemaRegistry.auth.method=bearer", f"schemaRegistry.auth.bearerToken={TOKEN}"
    )
    assert secret_data(docs, FULLNAME)["IMCONNECTOR_SCHEMA_REGISTRY_BEARER_TOKEN"] == TOKEN
    assert TOKEN not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    assert "IMCONNECTOR_SECRETS_DIR" not in config(docs)


def test_inline_ca_is_stored_and_mounted_where_the_setting_points(helm: str) -> None:
    docs = render_with(helm, f"schemaRegistry.tls.caCert={PEM}")
    location = config(docs)["IMCONNECTOR_SCHEMA_REGISTRY_CA_LOCATION"]
    secret, key = mounted_file(docs, location)
    assert secret == f"{FULLNAME}-schema-registry-ca"
    assert secret_data(docs, secret)[key] == PEM
    assert PEM.splitlines()[1] not in yaml.safe_dump(one(docs, "ConfigMap", FULLNAME))


def test_ca_from_an_existing_secret(helm: str) -> None:
    docs = render_with(
        helm, "schemaRegistry.tls.existingSecret=registry-ca", "schemaRegistry.tls.caKey=ca.pem"
    )
    location = config(docs)["IMCONNECTOR_SCHEMA_REGISTRY_CA_LOCATION"]
    assert mounted_file(docs, location) == ("registry-ca", "ca.pem")
    assert not [
        s for s in docs if s["kind"] == "Secret" and "schema-registry" in s["metadata"]["name"]
    ]


def test_rotating_inline_registry_secrets_rolls_the_pods(helm: str) -> None:
    def checksum(*sets: str) -> str:
        annotations = workload(render_with(helm, *sets))["spec"]["template"]["metadata"]
        return str(annotations["annotations"]["checksum/secret"])

    basic = ("schemaRegistry.auth.method=basic", "schemaRegistry.auth.username=u")
    assert checksum(*basic, "schemaRegistry.auth.password=a") != checksum(
        *basic, "schemaRegistry.auth.password=b"
    )
    assert checksum("schemaRegistry.tls.caCert=A") != checksum("schemaRegistry.tls.caCert=B")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            (
                "schemaRegistry.url=",
                "schemaRegistry.auth.method=bearer",
                "schemaRegistry.auth.bearerToken=t",
            ),
            "schemaRegistry.url is empty",
        ),
        (
            ("schemaRegistry.auth.method=basic", f"schemaRegistry.auth.password={PASSWORD}"),
            "needs a user",
        ),
        (
            ("schemaRegistry.auth.method=basic", "schemaRegistry.auth.username=u"),
            "needs a password",
        ),
        (("schemaRegistry.auth.method=bearer",), "needs a token"),
        (
            (
                "schemaRegistry.auth.method=bearer",
                "schemaRegistry.auth.existingSecret=s",
                f"schemaRegistry.auth.bearerToken={TOKEN}",
            ),
            "would be ignored",
        ),
        (("schemaRegistry.auth.username=u",), "method is none"),
        (
            (
                "schemaRegistry.auth.method=bearer",
                "schemaRegistry.auth.bearerToken=t",
                "schemaRegistry.auth.username=u",
            ),
            "not both",
        ),
    ],
)
def test_contradicting_registry_values_fail_with_the_fix(
    helm: str, sets: tuple[str, ...], message: str
) -> None:
    result = try_template(helm, VALUE_SETS["defaults"], sets=(f"schemaRegistry.url={URL}", *sets))
    assert result.returncode != 0
    assert message in result.stderr
    assert PASSWORD not in result.stderr and TOKEN not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@registry.example.com",  # credentials belong in auth
        "ftp://registry.example.com",
        "registry.example.com:8081",
    ],
)
def test_schema_refuses_bad_registry_urls(helm: str, url: str) -> None:
    result = try_template(
        helm, VALUE_SETS["defaults"], extra=("--set-literal", f"schemaRegistry.url={url}")
    )
    assert result.returncode != 0
    assert "/schemaRegistry/url" in result.stderr


def test_several_registry_urls(helm: str) -> None:
    urls = "https://sr-0.example.com:8081,https://sr-1.example.com:8081/base"
    result = try_template(
        helm, VALUE_SETS["defaults"], extra=("--set-literal", f"schemaRegistry.url={urls}")
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert config(docs)["IMCONNECTOR_SCHEMA_REGISTRY_URL"] == urls


@pytest.mark.parametrize(
    ("url", "ports"),
    [
        ("http://schema-registry.kafka.svc:8081", [8081]),
        ("https://registry.example.com", [443]),
        ("http://registry.example.com/base", [80]),
        ("https://sr-0.example.com:8443,https://sr-1.example.com:8443", [8443]),
    ],
)
def test_network_policy_lets_the_registry_through(helm: str, url: str, ports: list[int]) -> None:
    """Without this rule a NetworkPolicy would hold every registry-framed record forever
    (the registry unreachable is a wait, not a dead letter)."""
    result = try_template(
        helm,
        VALUE_SETS["defaults"],
        sets=("networkPolicy.enabled=true",),
        extra=("--set-literal", f"schemaRegistry.url={url}"),
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    assert [p["port"] for p in egress[-1]["ports"]] == ports
    assert len(egress) == 4  # DNS, Kafka, Bitrix24, registry


def test_no_registry_rule_without_a_registry(helm: str) -> None:
    result = try_template(helm, VALUE_SETS["defaults"], sets=("networkPolicy.enabled=true",))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(one(docs, "NetworkPolicy")["spec"]["egress"]) == 3
