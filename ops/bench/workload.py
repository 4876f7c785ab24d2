"""The benchmark's workload and how it reaches Kafka: generated chats, pre-produced or paced.

`consumer.demo.workload` chat scripts (all six event kinds) interleaved over many chats with
duplicates and out-of-order swaps, Avro single-object encoded, keyed by chat. A *record* is
one Kafka record of such a topic: an event, or a duplicate copy of one.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent
from consumer.demo.workload import chat_script, interleave

PORTAL = "bench-portal"
CONNECTOR = "bench_connector"
LINE = 1
PARTITIONS = 6
BASE_MS = 1_760_000_000_000  # event times start here: the workload is the same on every run
DUPLICATE_RATE = 0.1  # of the generated workload: a second copy of that share of events


# -- the workload ------------------------------------------------------------------------------
@dataclass
class Workload:
    """Events in topic order (duplicates and swaps included) and their encoded records."""

    events: list[ChatEvent]
    records: list[tuple[bytes, bytes]]
    unique: int
    chats: int

    @property
    def duplicates(self) -> int:
        return len(self.events) - self.unique


def make_workload(events: int, chats: int, seed: int, chat_prefix: str = "chat") -> Workload:
    """`events` events (about) over `chats` chats, 10% duplicates, 10% out of order."""
    rng = random.Random(seed)
    chats = max(1, min(chats, events))
    mean = events / chats
    high = max(1, round(2 * mean) - 1)  # uniform 1..high has mean `mean`
    scripts = [
        chat_script(
            rng,
            PORTAL,
            CONNECTOR,
            LINE,
            f"{chat_prefix}-{i:07d}",
            rng.randint(1, high),
            start_ms=BASE_MS + i,
        )
        for i in range(chats)
    ]
    unique = sum(len(s) for s in scripts)
    ordered = interleave(scripts, rng, duplicate_rate=DUPLICATE_RATE, reorder_rate=0.1)
    encoder = ChatEventEncoder("single-object")
    encoded: dict[str, bytes] = {}
    records = []
    for event in ordered:
        value = encoded.get(event.event_id)
        if value is None:
            value = encoded[event.event_id] = encoder.encode(event)
        records.append((event.key.encode(), value))
    return Workload(ordered, records, unique, chats)


# -- Kafka -------------------------------------------------------------------------------------
def create_topics(
    admin: AdminClient, names: Iterable[str], config: dict[str, str] | None = None
) -> None:
    futures = admin.create_topics([NewTopic(n, PARTITIONS, 1, config=config or {}) for n in names])
    for future in futures.values():
        future.result(30)
    for name in names:  # wait until every partition has a leader in the metadata
        deadline = time.monotonic() + 30
        while True:
            meta = admin.list_topics(timeout=10).topics.get(name)
            if meta is not None and meta.error is None and len(meta.partitions) == PARTITIONS:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} not visible after create")
            time.sleep(0.1)


def delete_run_topics(admin: AdminClient, run_id: str) -> None:
    names = [t for t in admin.list_topics(timeout=10).topics if run_id in t]
    if names:
        for future in admin.delete_topics(names).values():
            with contextlib.suppress(KafkaException):
                future.result(30)


def fast_producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )


def produce_all(
    producer: Producer,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    partitions: Iterable[int] | None = None,
) -> int:
    count = 0
    parts = iter(partitions) if partitions is not None else None
    for key, value in records:
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if parts is not None:
            kwargs["partition"] = next(parts)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError(f"records for {topic} not acknowledged by Kafka")
    return count


def paced_produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float
) -> list[float]:
    """Produce at `rate` records/s; each record's timestamp is when it was produced.

    Returns those timestamps (unix seconds, millisecond precision like Kafka's).
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    stamps: list[float] = []
    started = time.monotonic()
    for index, (key, value) in enumerate(records):
        delay = started + index / rate - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)
        millis = int(time.time() * 1000)
        producer.produce(topic, key=key, value=value, timestamp=millis)
        stamps.append(millis / 1000)
        producer.poll(0)
    producer.flush(30)
    return stamps
