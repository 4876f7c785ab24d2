"""The registry client (confluent-kafka's underneath) against the simulator's registry as
users run one: plain http on a cluster address, basic or bearer auth, https with a private CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from consumer.codec import ChatEventDecoder, ChatEventEncoder, SchemaRegistryClient
from consumer.core.events import MessageSent
from consumer.errors import RegistryUnavailable, UnknownSchema
from consumer.settings import load_settings
from tests.integration.harness import chat_event
from tests.integration.simulator_fixtures import Sim, running_simulator


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def round_trip(registry: SchemaRegistryClient) -> None:
    """Register, encode with Confluent framing, decode through the registry by id."""
    event = chat_event("chat-1", 1, MessageSent("m1", "hello"))
    value = ChatEventEncoder("confluent", registry).encode(event)
    assert ChatEventDecoder(registry).decode(value).event_id == event.event_id


def test_plain_http_registry_from_the_settings(sim: Sim) -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "a:1"}, schema_registry_url=sim.server.registry_url
    )
    registry = SchemaRegistryClient.from_settings(settings)
    assert registry is not None
    with registry:
        round_trip(registry)
        with pytest.raises(UnknownSchema) as caught:
            registry.get_schema(9999)  # a 404 for an id: poison
        assert caught.value.code == "UNKNOWN_SCHEMA_ID"


def test_basic_auth_from_settings(sim: Sim) -> None:
    sim.server.registry.require_auth(basic=("sr-user", "sr-pass"))
    url = sim.server.registry_url
    with SchemaRegistryClient(url) as anonymous, pytest.raises(RegistryUnavailable, match="401"):
        anonymous.get_schema(1)  # refused: the record waits, it is not poison
    wrong = SchemaRegistryClient(url, username="sr-user", password="wrong")
    with wrong, pytest.raises(RegistryUnavailable, match="401"):
        wrong.get_schema(1)
    settings = load_settings(
        kafka={"bootstrap_servers": "a:1"},
        schema_registry_url=url,
        schema_registry_username="sr-user",
        schema_registry_password="sr-pass",
    )
    registry = SchemaRegistryClient.from_settings(settings)
    assert registry is not None
    with registry:
        round_trip(registry)


def test_bearer_auth_from_settings(sim: Sim) -> None:
    sim.server.registry.require_auth(bearer="sr-token-1")
    url = sim.server.registry_url
    wrong = SchemaRegistryClient(url, bearer_token="other")
    with wrong, pytest.raises(RegistryUnavailable, match="401"):
        wrong.get_schema(1)
    settings = load_settings(
        kafka={"bootstrap_servers": "a:1"},
        schema_registry_url=url,
        schema_registry_bearer_token="sr-token-1",
    )
    registry = SchemaRegistryClient.from_settings(settings)
    assert registry is not None
    with registry:
        round_trip(registry)


def test_https_with_a_private_ca_bundle(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    bundle = tmp_path / "registry-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with running_simulator() as sim:
        httpd = sim.server._httpd
        httpd.socket = server_tls.wrap_socket(httpd.socket, server_side=True)
        url = sim.server.registry_url.replace("http://", "https://")
        with SchemaRegistryClient(url) as untrusting, pytest.raises(RegistryUnavailable):
            untrusting.get_schema(1)  # the certificate is not signed by a CA it knows
        settings = load_settings(
            kafka={"bootstrap_servers": "a:1"},
            schema_registry_url=url,
            schema_registry_ca_location=str(bundle),
        )
        registry = SchemaRegistryClient.from_settings(settings)
        assert registry is not None
        with registry:
            round_trip(registry)


def test_a_registry_that_does_not_answer_makes_records_wait(sim: Sim) -> None:
    url = sim.server.registry_url
    sim.server.stop()
    registry = SchemaRegistryClient(url, timeout=2)
    with registry, pytest.raises(RegistryUnavailable, match="unreachable"):
        registry.get_schema(1)
