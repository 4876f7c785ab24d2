"""The Confluent-compatible schema registry under /registry and its Avro compatibility check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from simulator_fixtures import running_simulator

from consumer.simulator.compatibility import is_backward_compatible

REPO = Path(__file__).resolve().parents[2]
SR_JSON = "application/vnd.schemaregistry.v1+json"


def record(*fields: dict[str, Any], name: str = "Event") -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "t", "fields": list(fields)})


V1 = record({"name": "id", "type": "string"}, {"name": "count", "type": "int"})


@pytest.fixture
def registry() -> Iterator[httpx.Client]:
    with (
        running_simulator() as sim,
        httpx.Client(base_url=sim.server.registry_url, headers={"Content-Type": SR_JSON}) as client,
    ):
        yield client


def register(client: httpx.Client, subject: str, schema: str) -> httpx.Response:
    return client.post(f"/subjects/{subject}/versions", json={"schema": schema})


def test_register_returns_an_id_and_same_schema_keeps_it(registry: httpx.Client) -> None:
    first = register(registry, "chat-value", V1)
    assert first.status_code == 200
    assert first.headers["content-type"] == SR_JSON
    schema_id = first.json()["id"]
    # Formatting differences do not make a new schema.
    reformatted = json.dumps(json.loads(V1), indent=4)
    assert register(registry, "chat-value", reformatted).json() == {"id": schema_id}
    assert register(registry, "other-value", V1).json() == {"id": schema_id}
    assert registry.get("/subjects/chat-value/versions").json() == [1]
    assert registry.get("/subjects").json() == ["chat-value", "other-value"]


def test_schema_by_id_and_unknown_id(registry: httpx.Client) -> None:
    schema_id = register(registry, "s", V1).json()["id"]
    got = registry.get(f"/schemas/ids/{schema_id}")
    assert got.status_code == 200
    assert json.loads(got.json()["schema"]) == json.loads(V1)
    missing = registry.get("/schemas/ids/999")
    assert missing.status_code == 404
    assert missing.json() == {"error_code": 40403, "message": "Schema not found"}


def test_versions_and_latest(registry: httpx.Client) -> None:
    v2 = record(
        {"name": "id", "type": "string"},
        {"name": "count", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},
    )
    id1 = register(registry, "s", V1).json()["id"]
    id2 = register(registry, "s", v2).json()["id"]
    assert id1 != id2
    assert registry.get("/subjects/s/versions").json() == [1, 2]
    latest = registry.get("/subjects/s/versions/latest").json()
    assert latest == {"subject": "s", "version": 2, "id": id2, "schema": v2}
    assert registry.get("/subjects/s/versions/1").json()["id"] == id1
    assert registry.get("/subjects/s/versions/3").json()["error_code"] == 40402
    assert registry.get("/subjects/nope/versions").json()["error_code"] == 40401
    looked_up = registry.post("/subjects/s", json={"schema": V1}).json()
    assert (looked_up["id"], looked_up["version"]) == (id1, 1)


@pytest.mark.parametrize(
    ("candidate", "compatible"),
    [
        # New field with a default: old data still readable.
        (
            record(
                {"name": "id", "type": "string"},
                {"name": "count", "type": "int"},
                {"name": "extra", "type": "string", "default": ""},
            ),
            True,
        ),
        # New field without a default: old data lacks it.
        (
            record(
                {"name": "id", "type": "string"},
                {"name": "count", "type": "int"},
                {"name": "extra", "type": "string"},
            ),
            False,
        ),
        # Removed field: the reader just ignores it.
        (record({"name": "id", "type": "string"}), True),
        # int → long is a promotion.
        (record({"name": "id", "type": "string"}, {"name": "count", "type": "long"}), True),
        # int → string is not.
        (record({"name": "id", "type": "string"}, {"name": "count", "type": "string"}), False),
        # Widening to a union that contains the old type.
        (
            record({"name": "id", "type": "string"}, {"name": "count", "type": ["null", "int"]}),
            True,
        ),
        # A different record name does not resolve.
        (record({"name": "id", "type": "string"}, name="Other"), False),
    ],
)
def test_compatibility_endpoint_checks_backward(
    registry: httpx.Client, candidate: str, compatible: bool
) -> None:
    register(registry, "s", V1)
    response = registry.post(
        "/compatibility/subjects/s/versions/latest", json={"schema": candidate}
    )
    assert response.status_code == 200
    assert response.json() == {"is_compatible": compatible}


def test_incompatible_registration_is_refused(registry: httpx.Client) -> None:
    register(registry, "s", V1)
    narrowed = record({"name": "id", "type": "string"}, {"name": "count", "type": "string"})
    refused = register(registry, "s", narrowed)
    assert refused.status_code == 409
    assert refused.json()["error_code"] == 409
    assert registry.get("/subjects/s/versions").json() == [1]
    assert registry.put("/config/s", json={"compatibility": "NONE"}).status_code == 200
    assert register(registry, "s", narrowed).status_code == 200


def test_invalid_schema_is_422(registry: httpx.Client) -> None:
    unknown_type = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "Nope"}]}
    bad = register(registry, "s", json.dumps(unknown_type))
    assert bad.status_code == 422
    assert bad.json()["error_code"] == 42201
    assert register(registry, "s", "not json").json()["error_code"] == 42201


def test_the_projects_chat_event_schema_registers(registry: httpx.Client) -> None:
    schema = (REPO / "schemas" / "chat_event.v1.avsc").read_text(encoding="utf-8")
    schema_id = register(registry, "chat-events-value", schema).json()["id"]
    assert registry.get(f"/schemas/ids/{schema_id}").json()["schema"] == schema
    assert registry.post(
        "/compatibility/subjects/chat-events-value/versions/latest", json={"schema": schema}
    ).json() == {"is_compatible": True}


def test_recursive_and_named_types_resolve() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    wider = json.loads(json.dumps(node))
    wider["fields"][0]["type"]["symbols"] = ["A", "B", "C"]
    assert is_backward_compatible(json.dumps(wider), json.dumps(node))
    # Dropping an enum symbol breaks old data unless the reader has an enum default.
    assert not is_backward_compatible(json.dumps(node), json.dumps(wider))
    node_with_default = json.loads(json.dumps(node))
    node_with_default["fields"][0]["type"]["default"] = "A"
    assert is_backward_compatible(json.dumps(node_with_default), json.dumps(wider))
