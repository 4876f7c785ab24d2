"""The chart's inbound values: pull is a setting; push adds a Service, an optional Ingress
for exactly the event path and a NetworkPolicy rule; application tokens go to the Secret."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate
import pytest

from tests.integration.chart import K8S_VERSIONS, by_kind, documents, one, template, try_template

TOKEN = "application-token-sentinel-3e1f"
PORTAL_SETS = (
    "portals.p1.restUrl=https://p1.example.com/rest/",
    "portals.p1.clientId=local.app",
    "portals.p1.memberId=bac1cd5c8940947a75e0d71b1a84e348",
    f"portals.p1.applicationToken={TOKEN}",
)


def rendered(helm: str, *sets: str) -> list[dict[str, Any]]:
    return documents(template(helm, "default-values.yaml", sets=(*PORTAL_SETS, *sets)))


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap")["data"])


def test_off_by_default_renders_nothing_inbound(helm: str) -> None:
    docs = rendered(helm)
    assert not [k for k in config(docs) if k.startswith("IMCONNECTOR_INBOUND__")]
    assert [s["metadata"]["name"] for s in by_kind(docs, "Service")] == ["rel-imconnector-consumer"]
    assert by_kind(docs, "Ingress") == []


def test_pull_is_a_setting_and_exposes_nothing(helm: str) -> None:
    docs = rendered(helm, "inbound.mode=pull", "networkPolicy.enabled=true")
    env = config(docs)
    assert env["IMCONNECTOR_INBOUND__PULL_IN_SERVICE"] == "true"
    assert env["IMCONNECTOR_INBOUND__TOPIC"] == "imconnector.operator-events"
    assert "IMCONNECTOR_INBOUND__PUSH_ON_SERVICE_PORT" not in env
    assert len(by_kind(docs, "Service")) == 1 and by_kind(docs, "Ingress") == []
    assert len(one(docs, "NetworkPolicy")["spec"]["ingress"]) == 1


def test_push_adds_service_ingress_and_network_policy_rule(helm: str) -> None:
    docs = rendered(
        helm,
        "inbound.mode=push",
        "inbound.push.ingress.enabled=true",
        "inbound.push.ingress.host=events.example.com",
        "inbound.push.ingress.className=nginx",
        "networkPolicy.enabled=true",
        "inbound.push.from[0].namespaceSelector.matchLabels.name=ingress-nginx",
    )
    env = config(docs)
    assert env["IMCONNECTOR_INBOUND__PUSH_ON_SERVICE_PORT"] == "true"
    assert env["IMCONNECTOR_INBOUND__PUSH_PATH"] == "/bitrix24/events"
    assert env["IMCONNECTOR_PORTALS__P1__MEMBER_ID"] == "bac1cd5c8940947a75e0d71b1a84e348"
    service = one(docs, "Service", "rel-imconnector-consumer-events")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "events.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/bitrix24/events",
            "pathType": "Exact",
            "backend": {
                "service": {"name": "rel-imconnector-consumer-events", "port": {"name": "http"}}
            },
        }
    ]
    policy = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert policy[1] == {
        "ports": [{"port": "http", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}],
    }
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_application_token_is_a_secret(helm: str) -> None:
    docs = rendered(helm, "inbound.mode=push")
    secret = one(docs, "Secret")
    encoded = secret["data"]["IMCONNECTOR_PORTALS__P1__APPLICATION_TOKEN"]
    assert base64.b64decode(encoded).decode() == TOKEN
    assert TOKEN not in str(one(docs, "ConfigMap"))
    with_file = rendered(
        helm, "inbound.mode=push", "portals.p1.applicationTokenFile=/var/run/app/token"
    )
    assert config(with_file)["IMCONNECTOR_PORTALS__P1__APPLICATION_TOKEN_FILE"] == (
        "/var/run/app/token"
    )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("inbound.mode=sometimes",), "/inbound/mode"),
        (("inbound.mode=push", "inbound.push.ingress.enabled=true"), "inbound.push.ingress.host"),
        (("inbound.push.path=events",), "/inbound/push/path"),
    ],
)
def test_bad_inbound_values_are_refused(helm: str, sets: tuple[str, ...], message: str) -> None:
    result = try_template(helm, "default-values.yaml", sets=(*PORTAL_SETS, *sets))
    assert result.returncode != 0
    assert message in result.stderr
