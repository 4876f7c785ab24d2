"""Push mode on the real broker: the simulator's event POSTs stored once Kafka acknowledged
them; forged or missing tokens, unknown portals, malformed, oversized, replayed and
too frequent requests refused with their own status, counted, and nothing produced; a
Kafka outage answers 503; `events serve` as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import PORTAL, line_simulator, wait_until
from inbound_helpers import (
    bind,
    customer_chats,
    inbound_settings,
    operator_answers,
    operator_events,
)
from prometheus_client import CollectorRegistry

from consumer.bitrix.oauth import MemoryTokenStore
from consumer.inbound.push import ApplicationTokens, PushHandler
from consumer.inbound.service import InboundInService, push_endpoint
from consumer.inbound.sink import AcknowledgedSink
from consumer.observability.health import OpsServer
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from consumer.simulator import SimulatorServer
from consumer.simulator.events import encode_form

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with line_simulator() as server:
        yield server


class Endpoint:
    """The push handler on a loopback port, as the service mounts it."""

    def __init__(self, settings: Settings, *, create_topic: bool = True) -> None:
        self.settings = settings
        self.metrics = Metrics(CollectorRegistry())
        if create_topic:
            handler, self.sink = push_endpoint(settings, self.metrics)
        else:  # Kafka is "down": push_endpoint would wait for it to create the topic
            self.sink = AcknowledgedSink(settings)
            tokens = ApplicationTokens(settings.portals)
            handler = PushHandler(settings.inbound, tokens, self.sink, self.metrics)
        path = settings.inbound.push_path
        self.ops = OpsServer(
            self.metrics, lambda: True, host="127.0.0.1", port=0, post_routes={path: handler.handle}
        ).start()
        self.url = f"http://127.0.0.1:{self.ops.port}{path}"

    def close(self) -> None:
        self.ops.stop()
        self.sink.close()

    def post(self, body: bytes, content_type: str = "application/x-www-form-urlencoded") -> Any:
        return httpx.post(
            self.url, content=body, headers={"Content-Type": content_type}, timeout=30
        )

    def refused(self, reason: str, kind: str = "unknown", portal: str = PORTAL) -> float:
        labels = {"mode": "push", "kind": kind, "portal": portal, "reason": reason}
        value = self.metrics.registry.get_sample_value(
            "imconnector_inbound_events_refused_total", labels
        )
        return value or 0.0


def event_body(sim: SimulatorServer, token: str | None, **overrides: Any) -> bytes:
    """An OnImConnectorMessageAdd POST body as the simulator's queue server writes it."""
    body: dict[str, Any] = {
        "event": "ONIMCONNECTORMESSAGEADD",
        "event_handler_id": "1",
        "data": {
            "CONNECTOR": "test_connector",
            "LINE": 7,
            "MESSAGES": [
                {
                    "im": {"chat_id": 1701, "message_id": 10001},
                    "message": {"user_id": 1, "text": "Hello from the operator"},
                    "chat": {"id": "chat-0"},
                }
            ],
        },
        "ts": "1773759161",
        "auth": {"member_id": sim.config.member_id, "domain": "sim.example"},
    }
    if token is not None:
        body["auth"]["application_token"] = token
    body.update(overrides)
    return encode_form(body)


@pytest.fixture
def endpoint(kafka_bootstrap, sim, unique) -> Iterator[Endpoint]:
    token = sim.portal.events.application_token
    point = Endpoint(inbound_settings(kafka_bootstrap, sim, unique, application_token=token))
    yield point
    point.close()


def nothing_produced(kafka_bootstrap: str, endpoint: Endpoint) -> bool:
    return operator_events(kafka_bootstrap, endpoint.settings.inbound.topic) == []


def test_operator_answers_pushed_by_the_portal_reach_kafka(kafka_bootstrap, sim, endpoint):
    bind(sim, handler=endpoint.url)
    posted = operator_answers(sim, customer_chats(sim, 3))
    assert sim.portal.events.wait_delivered(3, 30)
    with sim.portal.lock:
        statuses = [d["status"] for d in sim.portal.events.snapshot()["deliveries"]]
    assert statuses == [200, 200, 200]  # answered after Kafka acknowledged
    events = operator_events(kafka_bootstrap, endpoint.settings.inbound.topic)
    assert sorted(e.im_message_id or 0 for e in events) == sorted(
        p["im"]["message_id"] for p in posted
    )
    assert {e.source for e in events} == {"push"}
    assert {e.portal for e in events} == {PORTAL}
    produced = endpoint.metrics.registry.get_sample_value(
        "imconnector_inbound_events_produced_total",
        {"mode": "push", "kind": "MessageAdd", "portal": PORTAL},
    )
    assert produced == 3


def test_a_forged_or_missing_token_is_refused_and_nothing_is_produced(
    kafka_bootstrap, sim, endpoint
):
    forged = endpoint.post(event_body(sim, "0" * 32))
    assert forged.status_code == 401 and "application_token" in forged.text
    assert endpoint.post(event_body(sim, None)).status_code == 401
    almost = sim.portal.events.application_token[:-1] + "x"
    assert endpoint.post(event_body(sim, almost)).status_code == 401
    assert endpoint.refused("bad_token") == 3
    assert nothing_produced(kafka_bootstrap, endpoint)
    assert "0" * 32 not in forged.text  # the answer never echoes a token


def test_unknown_portal_malformed_and_oversized_requests_are_refused(
    kafka_bootstrap, sim, endpoint
):
    token = sim.portal.events.application_token
    unknown = event_body(sim, token, auth={"member_id": "f" * 32, "application_token": token})
    assert endpoint.post(unknown).status_code == 403
    assert endpoint.refused("unknown_portal", portal="unknown") == 1
    assert endpoint.post(b"event=&data=1").status_code == 400
    assert endpoint.post(event_body(sim, token), content_type="application/json").status_code == 415
    broken = event_body(sim, token, data={"CONNECTOR": "test_connector", "LINE": 7})
    answer = endpoint.post(broken)
    assert answer.status_code == 400 and "MESSAGES" in answer.text
    assert endpoint.refused("malformed", kind="MessageAdd") == 1
    assert endpoint.post(b"\xff\xfe=1").status_code == 400
    assert endpoint.refused("malformed", portal="unknown") == 3
    other = event_body(sim, token, event="ONAPPINSTALL")
    assert endpoint.post(other).status_code == 400
    assert endpoint.refused("not_connector_event") == 1
    limit = endpoint.settings.inbound.max_body_bytes
    huge = endpoint.post(event_body(sim, token) + b"&pad=" + b"x" * limit)
    assert huge.status_code == 413 and "MAX_BODY_BYTES" in huge.text
    assert endpoint.refused("too_large", portal="unknown") == 1
    assert nothing_produced(kafka_bootstrap, endpoint)


def test_a_replayed_event_is_refused(kafka_bootstrap, sim, endpoint):
    body = event_body(sim, sim.portal.events.application_token)
    assert endpoint.post(body).status_code == 200
    again = endpoint.post(body)
    assert again.status_code == 409 and "already" in again.text
    assert endpoint.refused("replayed", kind="MessageAdd") == 1
    assert len(operator_events(kafka_bootstrap, endpoint.settings.inbound.topic)) == 1


def test_requests_over_the_rate_are_refused(kafka_bootstrap, sim, unique):
    token = sim.portal.events.application_token
    settings = inbound_settings(
        kafka_bootstrap, sim, unique, application_token=token, push_rate=0.01, push_burst=2
    )
    point = Endpoint(settings)
    try:
        statuses = [point.post(event_body(sim, "wrong")).status_code for _ in range(3)]
        assert statuses == [401, 401, 429]
        assert point.refused("rate_limited", portal="unknown") == 1
    finally:
        point.close()


def test_kafka_outage_answers_503_and_the_event_may_come_again(kafka_bootstrap, sim, unique):
    token = sim.portal.events.application_token
    good = inbound_settings(kafka_bootstrap, sim, unique, application_token=token)
    down = good.model_copy(
        update={
            "kafka": good.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9"}),
            "inbound": good.inbound.model_copy(update={"produce_timeout_s": 2.0}),
        }
    )
    Endpoint(good).close()  # the topic exists; the endpoint below cannot reach Kafka
    point = Endpoint(down, create_topic=False)
    try:
        body = event_body(sim, token)
        first = point.post(body)
        assert first.status_code == 503 and "Kafka" in first.text
        assert point.post(body).status_code == 503  # not "replayed": it was never stored
        assert point.refused("kafka_unavailable", kind="MessageAdd") == 2
    finally:
        point.close()
    assert operator_events(kafka_bootstrap, good.inbound.topic) == []


def message_body(sim: SimulatorServer, token: str, message_id: int) -> bytes:
    element = {
        "im": {"chat_id": 1701, "message_id": message_id},
        "message": {"user_id": 1, "text": f"message {message_id}"},
        "chat": {"id": "chat-0"},
    }
    data = {"CONNECTOR": "test_connector", "LINE": 7, "MESSAGES": [element]}
    return event_body(sim, token, data=data)


def test_the_token_may_come_from_a_file_and_is_read_again_when_it_changes(
    kafka_bootstrap, sim, unique, tmp_path
):
    token_file = tmp_path / "application_token"
    token_file.write_text("first-token\n")
    settings = inbound_settings(kafka_bootstrap, sim, unique)
    portal = settings.portals[PORTAL].model_copy(update={"application_token_file": str(token_file)})
    point = Endpoint(settings.model_copy(update={"portals": {PORTAL: portal}}))
    try:
        assert point.post(message_body(sim, "first-token", 10001)).status_code == 200
        token_file.write_text("second-token\n")  # the app was installed again
        os.utime(token_file, (1, 1))  # a new mtime, whatever the clock's resolution
        assert point.post(message_body(sim, "first-token", 10002)).status_code == 401
        assert point.post(message_body(sim, "second-token", 10002)).status_code == 200
    finally:
        point.close()
    assert len(operator_events(kafka_bootstrap, settings.inbound.topic)) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_events_serve_as_a_process_stores_what_the_portal_pushes(
    kafka_bootstrap, sim, unique, tmp_path
):
    settings = inbound_settings(kafka_bootstrap, sim, unique)
    port = free_port()
    portal = settings.portals[PORTAL]
    assert portal.access_token is not None and portal.refresh_token is not None
    env = {
        **os.environ,
        "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "IMCONNECTOR_INBOUND__TOPIC": settings.inbound.topic,
        "IMCONNECTOR_INBOUND__PUSH_HOST": "127.0.0.1",
        "IMCONNECTOR_INBOUND__PUSH_PORT": str(port),
        "IMCONNECTOR_PORTALS": json.dumps(
            {
                PORTAL: {
                    "rest_url": portal.rest_url,
                    "client_id": portal.client_id,
                    "client_secret": sim.config.client_secret,
                    "member_id": sim.config.member_id,
                    "application_token": sim.portal.events.application_token,
                }
            }
        ),
        "IMCONNECTOR_LOG_FORMAT": "json",
    }
    log_path = Path(tmp_path) / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "consumer", "events", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 60, "events serve listening"
            )
            bind(sim, handler=f"http://127.0.0.1:{port}/bitrix24/events")
            operator_answers(sim, customer_chats(sim, 2))
            assert sim.portal.events.wait_delivered(2, 30)
            assert len(operator_events(kafka_bootstrap, settings.inbound.topic, expect=2)) == 2
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert 'imconnector_inbound_events_produced_total{kind="MessageAdd",mode="push"' in (
                metrics
            )
            assert sim.portal.events.application_token not in log_path.read_text()
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(30) == 0
        finally:
            if serve.poll() is None:
                serve.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_service_mounts_the_handler_on_its_port_when_asked(kafka_bootstrap, sim, unique):
    token = sim.portal.events.application_token
    off = InboundInService(
        inbound_settings(kafka_bootstrap, sim, unique),
        Metrics(CollectorRegistry()),
        MemoryTokenStore(),
    )
    assert off.routes == {}
    settings = inbound_settings(
        kafka_bootstrap, sim, unique, application_token=token, push_on_service_port=True
    )
    metrics = Metrics(CollectorRegistry())
    inbound = InboundInService(settings, metrics, MemoryTokenStore())
    ops = OpsServer(metrics, lambda: True, host="127.0.0.1", port=0, post_routes=inbound.routes)
    ops.start()
    try:
        url = f"http://127.0.0.1:{ops.port}/bitrix24/events"
        answer = httpx.post(
            url,
            content=event_body(sim, token),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"http://127.0.0.1:{ops.port}/healthz", timeout=5).status_code == 200
    finally:
        ops.stop()
        inbound.stop()
    assert len(operator_events(kafka_bootstrap, settings.inbound.topic)) == 1
