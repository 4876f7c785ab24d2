"""One portal cannot starve the others (issue 15 item 4, architecture §6 invariant 5).

Request slots and connection pools are per portal: while every request to portal A hangs,
portal B's events keep flowing with their usual latency.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, ExternalUser, MessageSent
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    EngineThread,
    line_simulator,
    make_settings,
    portal_settings,
    wait_until,
)

pytestmark = pytest.mark.kafka


def event(portal: str, chat: str, seq: int) -> ChatEvent:
    return ChatEvent(
        event_id=f"{portal}-{chat}-{seq}",
        portal=portal,
        connector=CONNECTOR,
        line=LINE,
        chat_id=chat,
        occurred_at=int(time.time() * 1000),
        payload=MessageSent(f"{chat}-m{seq}", f"text {seq}"),
        sequence=seq,
        user=ExternalUser(id=f"u-{chat}", name="Ann"),
    )


def test_a_hanging_portal_leaves_another_flowing(kafka_bootstrap, topic_factory, unique):
    topic = topic_factory(3)
    encoder = ChatEventEncoder("single-object")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    with line_simulator() as hung, line_simulator() as healthy:
        hung.portal.update_faults({"latency_ms": 60_000})
        settings = make_settings(
            kafka_bootstrap,
            topic,
            unique("g"),
            healthy,
            portals={"portal-a": portal_settings(hung), "portal-b": portal_settings(healthy)},
            engine={"max_in_flight_requests": 8, "batch_size": 1},
        )
        with EngineThread(settings) as running:
            wait_until(lambda: running.engine.ready, 60, "the engine to join and restore")
            # Portal A's chats take every one of its request slots, and they hang.
            for n in range(40):
                value = encoder.encode(event("portal-a", f"a{n}", 1))
                producer.produce(topic, key=f"portal-a|{n}".encode(), value=value)
            producer.flush(10)
            dispatcher = running.engine.dispatcher
            wait_until(
                lambda: dispatcher.in_flight_by_portal().get("portal-a", 0) >= 8,
                30,
                "8 requests to A in flight",
            )
            sent: dict[str, float] = {}
            for n in range(60):  # portal B: 20 events/s for 3 s
                chat = f"b{n % 12}"
                ev = event("portal-b", chat, n // 12 + 1)
                producer.produce(topic, key=ev.key.encode(), value=encoder.encode(ev))
                producer.flush(5)
                sent[f"{chat}-m{n // 12 + 1}"] = time.time()
                time.sleep(0.05)
            wait_until(
                lambda: running.outcome("applied") >= len(sent), 60, "every event of portal B"
            )
            assert dispatcher.in_flight_by_portal()["portal-a"] <= 2 * 8, "A kept to its slots"
    done = {
        element["message"]["id"]: record.wall_time
        for record in healthy.portal.call_records()
        if record.applied
        for element in record.params["MESSAGES"]
    }
    latencies = sorted(done[mid] - at for mid, at in sent.items())
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"portal B while A hangs: p50 {latencies[len(latencies) // 2]:.3f}s p99 {p99:.3f}s")
    assert p99 < 2.0
