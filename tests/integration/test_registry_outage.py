"""A schema registry that does not answer delays records, never skips or stalls them
(issue 15 item 1, architecture §6 invariant 7).

While the registry answers 5xx, every partition goes back to its first undecoded record and
reads it again after a backoff; no offset is committed past it; once the registry answers,
consumption resumes by itself and every event is applied once, in order. A 404 for a schema
id is the record's fault: poison, dead-lettered at once.
"""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer.codec import ChatEventEncoder, SchemaRegistryClient
from tests.integration.harness import (
    EngineThread,
    applied_call_list,
    expected_calls,
    line_simulator,
    make_settings,
    produce,
    produce_raw,
    read_all,
    shuffled_workload,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with line_simulator() as server:
        yield server


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset per partition (-1001: none yet)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = reader.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return [tp.offset for tp in found]
    finally:
        reader.close()


@pytest.mark.parametrize("status", [503, 500])
def test_a_registry_outage_delays_every_partition_and_loses_nothing(
    kafka_bootstrap, topic_factory, unique, sim, status
):
    topic = topic_factory(3)
    group = unique("g")
    scripts, events = shuffled_workload(3, 30, 2, 5)
    with SchemaRegistryClient(f"{sim.url}/registry") as registry:
        encoder = ChatEventEncoder("confluent", registry, subject=f"{topic}-value")
    produce(kafka_bootstrap, topic, events, [encoder])
    sim.registry.outage_status = status
    settings = make_settings(kafka_bootstrap, topic, group, sim)
    with EngineThread(settings) as running:
        waits = running.metrics.registry.get_sample_value
        wait_until(
            lambda: (waits("imconnector_registry_waits_total") or 0) >= 6,
            60,
            "every partition to go back to its record at least twice",
        )
        assert running.outcomes_total() == 0
        assert sim.portal.call_records() == []
        # A commit happened meanwhile (the loop commits on an interval), and none went past
        # a record it could not decode.
        assert all(offset <= 0 for offset in committed(kafka_bootstrap, group, topic, 3))
        sim.registry.outage_status = None
        wait_until(
            lambda: running.outcomes_total() >= len(events), 120, "every record to reach an outcome"
        )
        dead = running.outcome("dead_lettered")
    assert dead == 0
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id


def test_an_unknown_schema_id_is_poison_not_an_outage(kafka_bootstrap, topic_factory, unique, sim):
    topic = topic_factory(1)
    produce_raw(kafka_bootstrap, topic, b"k", b"\x00" + struct.pack(">I", 987_654) + b"\x02")
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    with EngineThread(settings) as running:
        wait_until(lambda: running.outcome("dead_lettered") >= 1, 60, "the poison record")
        assert not running.metrics.registry.get_sample_value("imconnector_registry_waits_total")
    (dead,) = read_all(kafka_bootstrap, f"{topic}.dlq")
    headers = dict(dead.headers())
    assert headers["imconnector.error.class"] == b"poison"
    assert b"987654" in headers["__connect.errors.exception.message"]
