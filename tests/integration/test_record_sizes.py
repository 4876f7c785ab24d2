"""Size limits are the service's problem, not a crash (issue 15 item 2).

Any record the source topic accepts produces outputs the service can write: a call body
larger than one changelog record is stored in parts (and restored from them), and a dead
letter larger than its topic takes loses long header values first, then its value (class
`too_large`, with the source coordinates).
"""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.codec import ChatEventEncoder
from consumer.core.events import MessageSent
from consumer.store.encoding import key_kind
from tests.integration.harness import (
    EngineThread,
    OutcomeWatcher,
    chat_event,
    line_simulator,
    make_settings,
    produce,
    produce_raw,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with line_simulator() as server:
        yield server


def test_a_message_near_the_record_limit_is_applied_and_survives_a_handover(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    group = unique("g")
    big = "ы" * 450_000  # 900 KB of UTF-8: the record is close to Kafka's default 1 MB
    events = [
        chat_event("big", 1, MessageSent("big-1", big)),
        chat_event("big", 2, MessageSent("big-2", "after")),
        chat_event("small", 1, MessageSent("small-1", "hi")),
    ]
    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    # The portal refuses the big chat's calls for a while: they wait in the changelog,
    # whose records hold about 1 MB each.
    sim.portal.update_faults({"error_rate": 1.0, "methods": ["imconnector.send.messages"]})
    retry = {"base_delay_s": 0.05, "max_delay_s": 0.1, "max_attempts": 100_000}
    first = make_settings(
        kafka_bootstrap, topic, group, sim, retry=retry, instance_id="a", shutdown_grace_s=0.5
    )
    with EngineThread(first) as running:
        wait_until(
            lambda: (
                running.metrics.registry.get_sample_value(
                    "imconnector_events_consumed_total", {"topic": topic}
                )
                == 3
            ),
            60,
            "every event consumed",
        )
        wait_until(lambda: any(r.error for r in sim.portal.call_records()), 30, "a failed send")
    parts = [
        m
        for m in read_all(kafka_bootstrap, first.changelog_topic(topic))
        if key_kind(m.key()) == "part"
    ]
    assert parts, "the big body was written in parts"
    assert all(len(m.value()) < 1_000_000 for m in parts)
    sim.portal.update_faults({"error_rate": 0.0})
    second = make_settings(kafka_bootstrap, topic, group, sim, retry=retry, instance_id="b")
    with EngineThread(second), OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes:
        wait_until(lambda: outcomes.finished({e.event_id for e in events}), 120, "every outcome")
    assert set(outcomes.final.values()) == {"applied"}
    texts = [
        element["message"]["text"]
        for record in sim.portal.call_records()
        if record.applied and record.method == "imconnector.send.messages"
        for element in record.params["MESSAGES"]
        if element["chat"]["id"] == "big"
    ]
    assert texts == [big, "after"]


def test_a_dead_letter_larger_than_its_topic_is_cut_to_fit_and_says_so(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    dlq = f"{topic}.dlq"
    # The operator made the dead-letter topic small; the service reads its limit at start.
    future = admin.create_topics([NewTopic(dlq, 1, 1, config={"max.message.bytes": "20000"})])
    future[dlq].result(30)
    produce_raw(kafka_bootstrap, topic, b"k1", b"\x07" + os.urandom(60_000))  # poison, 60 KB
    produce_raw(kafka_bootstrap, topic, b"k2", b"\x07short")  # poison, small
    ok = chat_event("fine", 1, MessageSent("fine-1", "hi"))
    produce(kafka_bootstrap, topic, [ok], [ChatEventEncoder("single-object")])
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    with EngineThread(settings) as running:
        wait_until(lambda: running.outcome("applied") >= 1, 60, "the valid event after them")
        assert running.outcome("dead_lettered") == 2
    letters = {m.key(): m for m in read_all(kafka_bootstrap, dlq)}
    big = dict(letters[b"k1"].headers())
    assert letters[b"k1"].value() is None
    assert big["imconnector.error.class"] == b"too_large"
    assert big["imconnector.error.original_class"] == b"poison"
    assert big["imconnector.error.value_bytes"] == b"60001"
    assert (big["__connect.errors.topic"], big["__connect.errors.offset"]) == (topic.encode(), b"0")
    small = dict(letters[b"k2"].headers())
    assert letters[b"k2"].value() == b"\x07short"
    assert small["imconnector.error.class"] == b"poison"
