"""Pull mode on the real broker: the offline queue into Kafka in a transaction, then cleared;
a SIGKILL between the two loses nothing and its double carries the same event_id; a Kafka
outage clears nothing; unparseable records stay in the queue marked; `events bind`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from harness import CONNECTOR, LINE, PORTAL, line_simulator, portal_settings, wait_until
from inbound_helpers import (
    bind,
    customer_chats,
    inbound_settings,
    offline_rows,
    operator_answers,
    operator_events,
)
from prometheus_client import CollectorRegistry

from consumer.bitrix.client import BitrixClient
from consumer.bitrix.oauth import MemoryTokenStore
from consumer.cli import main
from consumer.inbound.pull import OfflinePuller, PullThread
from consumer.inbound.sink import KafkaUnavailable, TransactionalSink, ensure_topic
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from consumer.simulator import SimulatorServer

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with line_simulator() as server:
        yield server


def pull_until_empty(settings: Settings, metrics: Metrics, rounds: int = 20) -> int:
    """Run the pull loop's rounds in this thread until the queue is empty; records handled."""

    async def go() -> int:
        client = BitrixClient(settings.portals, settings.http, MemoryTokenStore())
        sink = TransactionalSink(settings)
        try:
            puller = OfflinePuller(settings, metrics, client, sink)
            total = 0
            for _ in range(rounds):
                handled = await puller.pull_once(PORTAL)
                total += handled
                if handled == 0:
                    return total
            raise AssertionError(f"the queue was not empty after {rounds} rounds")
        finally:
            await client.aclose()
            sink.close()

    return asyncio.run(go())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_offline_events_reach_kafka_keyed_by_chat_and_are_then_cleared(
    kafka_bootstrap, sim, unique
):
    settings = inbound_settings(kafka_bootstrap, sim, unique, pull_limit=4)
    ensure_topic(settings)
    bind(sim)
    chats = customer_chats(sim, 3)
    posted = operator_answers(sim, chats, per_chat=3)
    metrics = Metrics(CollectorRegistry())
    assert pull_until_empty(settings, metrics) == 9
    events = operator_events(kafka_bootstrap, settings.inbound.topic, expect=9)
    assert len(events) == 9
    assert {(e.im_chat_id, e.im_message_id) for e in events} == {
        (p["im"]["chat_id"], p["im"]["message_id"]) for p in posted
    }
    assert {e.kind for e in events} == {"MessageAdd"} and {e.source for e in events} == {"pull"}
    assert {e.key for e in events} == {f"{PORTAL}|{CONNECTOR}|{LINE}|chat-{n}" for n in range(3)}
    # One chat's answers are in one partition, in order.
    by_chat: dict[str, list[str]] = {}
    for event in events:
        by_chat.setdefault(event.chat_id, []).append(event.text or "")
    assert all(texts == sorted(texts) for texts in by_chat.values())
    assert offline_rows(sim) == []
    calls = [r.method for r in sim.portal.call_records() if r.method.startswith("event.")]
    assert calls.count("event.offline.clear") == 3  # limit 4: batches of 4, 4, 1
    produced = sample(
        metrics,
        "imconnector_inbound_events_produced_total",
        mode="pull",
        kind="MessageAdd",
        portal=PORTAL,
    )
    assert produced == 9
    assert sample(metrics, "imconnector_inbound_pull_lag_seconds", portal=PORTAL) == 0


def test_kafka_outage_clears_nothing_and_a_later_puller_loses_nothing(kafka_bootstrap, sim, unique):
    good = inbound_settings(kafka_bootstrap, sim, unique)
    ensure_topic(good)
    down = good.model_copy(
        update={
            "kafka": good.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9"}),
            "inbound": good.inbound.model_copy(update={"produce_timeout_s": 2.0}),
        }
    )
    bind(sim)
    operator_answers(sim, customer_chats(sim, 2), per_chat=2)
    metrics = Metrics(CollectorRegistry())

    async def one_round() -> None:
        client = BitrixClient(down.portals, down.http, MemoryTokenStore())
        try:
            puller = OfflinePuller(down, metrics, client, TransactionalSink(down))
            with pytest.raises(KafkaUnavailable):
                await puller.pull_once(PORTAL)
            # The batch stays reserved for this process; the lag shows its oldest event.
            assert puller.queues[PORTAL].current is not None
            lag = sample(metrics, "imconnector_inbound_pull_lag_seconds", portal=PORTAL)
            assert lag > 0 and puller.queues[PORTAL].oldest_ms is not None
        finally:
            await client.aclose()

    asyncio.run(one_round())
    rows = offline_rows(sim)
    assert len(rows) == 4 and all(row["PROCESS_ID"] for row in rows)
    assert not [r for r in sim.portal.call_records() if r.method == "event.offline.clear"]
    # A new process (Kafka back) finds the reservation with event.offline.list and takes it.
    assert pull_until_empty(good, Metrics(CollectorRegistry())) == 4
    events = operator_events(kafka_bootstrap, good.inbound.topic)
    assert len(events) == 4 and len({e.event_id for e in events}) == 4
    assert offline_rows(sim) == []


def test_sigkill_between_produce_and_clear_loses_nothing_and_marks_the_double(
    kafka_bootstrap, sim, unique, tmp_path
):
    settings = inbound_settings(kafka_bootstrap, sim, unique)
    ensure_topic(settings)
    bind(sim)
    posted = operator_answers(sim, customer_chats(sim, 4), per_chat=2)
    # event.offline.clear never arrives: the portal holds it, then drops the connection.
    sim.portal.update_faults(
        {"hang_rate": 1.0, "hang_seconds": 120, "methods": ["event.offline.clear"]}
    )
    portal = settings.portals[PORTAL]
    assert portal.access_token is not None and portal.refresh_token is not None
    env = {
        **os.environ,
        "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "IMCONNECTOR_GROUP_ID": settings.group_id,
        "IMCONNECTOR_INSTANCE_ID": settings.instance_id,
        "IMCONNECTOR_TOKENS_TOPIC": settings.tokens_topic,
        "IMCONNECTOR_HTTP_PORT": "0",
        "IMCONNECTOR_INBOUND__TOPIC": settings.inbound.topic,
        "IMCONNECTOR_PORTALS": json.dumps(
            {
                PORTAL: {
                    "rest_url": portal.rest_url,
                    "oauth_url": portal.oauth_url,
                    "client_id": portal.client_id,
                    "client_secret": sim.config.client_secret,
                    "access_token": portal.access_token.get_secret_value(),
                    "refresh_token": portal.refresh_token.get_secret_value(),
                }
            }
        ),
        "IMCONNECTOR_LOG_FORMAT": "json",
    }
    with open(tmp_path / "pull.log", "wb") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "consumer", "events", "pull"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: len(operator_events(kafka_bootstrap, settings.inbound.topic)) == 8,
                60,
                "the batch committed to Kafka",
                interval=0.5,
            )
            wait_until(
                lambda: any(r.method == "event.offline.clear" for r in sim.portal.call_records()),
                30,
                "the clear on its way",
            )
            first.send_signal(signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL
        finally:
            if first.poll() is None:
                first.kill()
    assert len(offline_rows(sim)) == 8  # still reserved: nothing was cleared
    sim.portal.update_faults({"hang_rate": 0.0})
    assert pull_until_empty(settings, Metrics(CollectorRegistry())) == 8
    events = operator_events(kafka_bootstrap, settings.inbound.topic)
    # No loss: every operator message is there; the double is the same event, same id.
    assert {e.im_message_id for e in events} == {p["im"]["message_id"] for p in posted}
    copies = Counter(e.event_id for e in events)
    assert len(copies) == 8 and set(copies.values()) == {2}
    first_copy: dict[str, object] = {}
    for event in events:
        assert first_copy.setdefault(event.event_id, event) == event
    assert offline_rows(sim) == []


def test_a_record_that_does_not_parse_is_marked_in_the_queue_and_the_rest_goes_on(
    kafka_bootstrap, sim, unique
):
    settings = inbound_settings(kafka_bootstrap, sim, unique)
    ensure_topic(settings)
    bind(sim)
    operator_answers(sim, customer_chats(sim, 2))
    with sim.portal.lock:  # a record without MESSAGES
        sim.portal.events.raise_event("ONIMCONNECTORMESSAGEADD", {"CONNECTOR": "demo"}, 1)
    metrics = Metrics(CollectorRegistry())
    assert pull_until_empty(settings, metrics) == 3
    assert len(operator_events(kafka_bootstrap, settings.inbound.topic)) == 2
    [left] = offline_rows(sim)
    assert (left["ERROR"], left["PROCESS_ID"], left["EVENT_DATA"]) == (
        "1",
        "",
        {"CONNECTOR": "demo"},
    )
    refused = sample(
        metrics,
        "imconnector_inbound_events_refused_total",
        mode="pull",
        kind="MessageAdd",
        portal=PORTAL,
        reason="malformed",
    )
    assert refused == 1


def test_pull_runs_as_a_thread_of_the_service(kafka_bootstrap, sim, unique):
    settings = inbound_settings(kafka_bootstrap, sim, unique, pull_in_service=True)
    bind(sim)
    chats = customer_chats(sim, 2)
    metrics = Metrics(CollectorRegistry())
    thread = PullThread(settings, metrics, MemoryTokenStore()).start()
    try:
        operator_answers(sim, chats)
        wait_until(
            lambda: (
                offline_rows(sim) == []
                and len(operator_events(kafka_bootstrap, settings.inbound.topic)) == 2
            ),
            60,
            "the thread moved both answers",
            interval=0.5,
        )
        operator_answers(sim, chats)  # and keeps going
        wait_until(
            lambda: len(operator_events(kafka_bootstrap, settings.inbound.topic)) == 4,
            60,
            "the next answers",
            interval=0.5,
        )
    finally:
        thread.stop()
    assert thread.error is None


def test_events_bind_binds_every_connector_event_offline_once(sim, unique, monkeypatch, capsys):
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("IMCONNECTOR_PORTALS", json.dumps({PORTAL: portal_settings(sim)}))
    assert main(["events", "bind"]) == 0
    with sim.portal.lock:
        handlers = sim.portal.events.get({})
    assert len(handlers) == 7 and all(h["offline"] == 1 for h in handlers)
    assert main(["events", "bind"]) == 0  # a second run binds nothing twice
    out = capsys.readouterr().out
    assert out.count("already bound") == 7
    with sim.portal.lock:
        assert len(sim.portal.events.get({})) == 7
    assert main(["events", "bind", "--handler", "https://app.example/events"]) == 0
    with sim.portal.lock:
        online = [h for h in sim.portal.events.get({}) if h["offline"] == 0]
    assert {h["handler"] for h in online} == {"https://app.example/events"} and len(online) == 7
