"""Kafka plumbing: client configs, topic provisioning, changelog restore, token store, DLQ headers.

The consumer reads committed data only and never auto-commits; the producer is
transactional with a stable id per replica so a restarted process fences its zombie.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer import __version__
from consumer.bitrix.oauth import MemoryTokenStore, TokenSet, TokenStore
from consumer.errors import ConfigError
from consumer.redact import redact
from consumer.settings import Settings
from consumer.state import PendingCall

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


def record_headers(msg: Message) -> tuple[tuple[str, bytes], ...]:
    """A record's headers as `(name, bytes)` pairs (None and str values normalised)."""
    raw: Any = msg.headers() or ()
    out = []
    for key, value in raw.items() if isinstance(raw, dict) else raw:
        if value is None:
            value = b""
        elif isinstance(value, str):
            value = value.encode()
        out.append((key, value))
    return tuple(out)


def record_position(msg: Message) -> tuple[str, int, int]:
    """`(topic, partition, offset)` of a consumed record."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def consumer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The group consumer: manual offsets (committed via the producer's transactions)."""
    conf = settings.kafka.librdkafka()
    base: dict[str, Any] = {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "client.id": f"imconnector-{settings.instance_id}",
        "statistics.interval.ms": settings.kafka.statistics_interval_ms,
        # End-of-partition events tell the engine it has read everything: only then may a
        # sequence gap be given up (the missing event is not in an unread backlog).
        "enable.partition.eof": True,
    }
    if settings.kafka.static_membership:
        base["group.instance.id"] = f"{settings.group_id}-{settings.instance_id}"
    if settings.kafka.group_protocol == "consumer":
        base["group.protocol"] = "consumer"  # KIP-848: assignment is server-side
    else:
        base["partition.assignment.strategy"] = "cooperative-sticky"
        base["session.timeout.ms"] = 15000
        base["heartbeat.interval.ms"] = 3000
    base.update(conf)
    base.update(extra)
    return base


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The transactional producer for changelog, outcomes, dead letters and offsets."""
    conf = settings.kafka.librdkafka()
    base: dict[str, Any] = {
        "transactional.id": f"imconnector-{settings.group_id}-{settings.instance_id}",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "transaction.timeout.ms": 30000,
        "client.id": f"imconnector-{settings.instance_id}-tx",
        "compression.type": "lz4",
    }
    base.update(conf)
    base.update(extra)
    return base


class Topics:
    """Creates and checks the service's own topics (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin = AdminClient(settings.kafka.librdkafka())

    def partitions_of(self, topic: str, timeout: float = 10.0) -> int | None:
        """Partition count of `topic`, or None if it does not exist."""
        # Ask for all topics: a metadata request naming one may auto-create it on brokers
        # with auto.create.topics.enable (with the broker's default partition count).
        meta = self._admin.list_topics(timeout=timeout)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return None
        return len(info.partitions)

    def wait_for_cluster(self, timeout: float = 10.0) -> None:
        """Block until the brokers answer, logging a clear reason while they do not."""
        delay = 1.0
        while True:
            try:
                self._admin.list_topics(timeout=timeout)
                return
            except KafkaException as exc:
                logger.error(
                    "Kafka at %s is unreachable (%s); check IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS "
                    "and the network/credentials; retrying in %.0fs",
                    self._settings.kafka.bootstrap_servers,
                    exc.args[0],
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def ensure(self, create_sources: bool = False, source_partitions: int = 6) -> dict[str, int]:
        """Create missing topics; return source topic -> partition count."""
        s = self._settings
        counts: dict[str, int] = {}
        for topic in s.source_topics:
            n = self.partitions_of(topic)
            if n is None and create_sources:
                self._create([NewTopic(topic, source_partitions, 1)])
                n = source_partitions
            if n is None:
                raise ConfigError(
                    f"source topic {topic!r} does not exist: create it or fix "
                    "IMCONNECTOR_SOURCE_TOPICS"
                )
            counts[topic] = n
        wanted: list[NewTopic] = []
        for topic, n in counts.items():
            changelog = s.changelog_topic(topic)
            existing = self.partitions_of(changelog)
            if existing is None:
                wanted.append(
                    NewTopic(
                        changelog,
                        n,
                        1,
                        config={
                            "cleanup.policy": "compact",
                            "min.compaction.lag.ms": "0",
                            "segment.ms": "3600000",
                        },
                    )
                )
            elif existing != n:
                raise ConfigError(
                    f"changelog {changelog!r} has {existing} partitions but source {topic!r} has "
                    f"{n}: they must be co-partitioned (recreate the changelog)"
                )
            dlq = s.dlq_topic(topic)
            if self.partitions_of(dlq) is None:
                wanted.append(NewTopic(dlq, n, 1))
        if self.partitions_of(s.outcomes_topic) is None:
            wanted.append(NewTopic(s.outcomes_topic, max(counts.values()), 1))
        if self.partitions_of(s.tokens_topic) is None:
            wanted.append(NewTopic(s.tokens_topic, 1, 1, config={"cleanup.policy": "compact"}))
        self._create(wanted)
        return counts

    def _create(self, topics: list[NewTopic]) -> None:
        if not topics:
            return
        for topic, future in self._admin.create_topics(topics).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            logger.info("created topic %s", topic)
        deadline = time.monotonic() + 30
        for new in topics:  # wait until metadata shows every partition with a leader
            while (seen := self.partitions_of(new.topic)) != new.num_partitions:
                logger.debug(
                    "waiting for %s: %s of %s partitions", new.topic, seen, new.num_partitions
                )
                if time.monotonic() > deadline:
                    raise KafkaException(
                        KafkaError(
                            KafkaError._TIMED_OUT, f"topic {new.topic} not visible after create"
                        )
                    )
                time.sleep(0.1)


def read_partition_to_end(
    reader: Consumer, topic: str, partition: int, timeout: float = 60.0
) -> Iterable[tuple[bytes, bytes | None]]:
    """Yield `(key, value)` of every committed record of one partition, start to end.

    `reader` reads committed data only with partition EOF events on (`restore_reader`),
    so an open transaction of a dead process (not yet aborted) is not restored.
    """
    low, high = _watermarks(reader, topic, partition)
    if high <= low:
        return
    reader.assign([TopicPartition(topic, partition, low)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"restoring {topic}[{partition}] did not reach the end "
                    f"({high}) within {timeout:.0f}s"
                )
            for msg in reader.consume(num_messages=10000, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return
                    raise KafkaException(error)
                key = msg.key()
                if key is not None:
                    yield key, msg.value()
    finally:
        reader.unassign()


def _watermarks(reader: Consumer, topic: str, partition: int) -> tuple[int, int]:
    # A topic created a moment ago may not be in this client's metadata yet.
    deadline = time.monotonic() + 30
    while True:
        try:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            code = exc.args[0].code()
            retriable = code in (
                KafkaError._UNKNOWN_PARTITION,
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._UNKNOWN_TOPIC,
                KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.NOT_LEADER_FOR_PARTITION,
            )
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def restore_reader(settings: Settings) -> Consumer:
    """A group-less consumer for changelog and token restores."""
    conf = settings.kafka.librdkafka()
    conf.update(
        {
            "group.id": f"{settings.group_id}-restore",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.max.bytes": 52428800,
            "max.partition.fetch.bytes": 10485760,
        }
    )
    return Consumer(conf)


class KafkaTokenStore:
    """OAuth pairs in a compacted topic (key = portal) shared by every replica."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.tokens_topic
        self._producer = Producer(
            {**settings.kafka.librdkafka(), "acks": "all", "enable.idempotence": True}
        )

    def load(self, portal: str) -> TokenSet | None:
        """The newest pair for `portal` in the topic."""
        reader = restore_reader(self._settings)
        newest: TokenSet | None = None
        try:
            for key, value in read_partition_to_end(reader, self._topic, 0, timeout=20):
                if key.decode() == portal and value:
                    candidate = TokenSet.from_json(value)
                    if newest is None or candidate.issued_at >= newest.issued_at:
                        newest = candidate
        finally:
            reader.close()
        return newest

    def save(self, portal: str, tokens: TokenSet) -> None:
        """Write and flush: the pair is durable before it is used."""
        self._producer.produce(
            self._topic, key=portal.encode(), value=tokens.to_json(), partition=0
        )
        if self._producer.flush(15) != 0:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "token save not acknowledged"))


def dead_letter_headers(
    call: PendingCall,
    *,
    group: str,
    error_class: str,
    code: str | None,
    message: str | None,
    http_status: int | None,
    attempts: int,
    now_ms: int,
) -> Headers:
    """Original headers plus the reason, in Kafka Connect's `__connect.errors.*` names."""
    topic, partition, offset = call.origin
    first = call.first_failure_ms or now_ms
    text = redact(message or "")[:1000]
    out: Headers = [
        (k, v)
        for k, v in call.headers
        if not k.startswith(("__connect.errors.", "imconnector.error."))
    ]
    out += [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.connector.name", group.encode()),
        ("__connect.errors.stage", b"VALUE_CONVERTER" if error_class == "poison" else b"TASK_PUT"),
        ("__connect.errors.exception.class.name", (code or error_class).encode()),
        ("__connect.errors.exception.message", text.encode()),
        ("imconnector.error.class", error_class.encode()),
        ("imconnector.error.code", (code or "").encode()),
        ("imconnector.error.http_status", str(http_status or "").encode()),
        ("imconnector.error.attempts", str(attempts).encode()),
        ("imconnector.error.first_failure_ms", str(first).encode()),
        ("imconnector.error.last_failure_ms", str(now_ms).encode()),
        ("imconnector.consumer.group", group.encode()),
        ("imconnector.event_id", call.event_id.encode()),
        ("imconnector.version", __version__.encode()),
    ]
    return out


def outcome_record(chat: str, call: PendingCall, outcome: str, **fields: Any) -> bytes:
    """One line of the audit trail (JSON)."""
    topic, partition, offset = call.origin
    doc = {
        "event_id": call.event_id,
        "chat": chat,
        "seq": call.seq,
        "kind": call.kind,
        "method": call.method,
        "outcome": outcome,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "at": int(time.time() * 1000),
    }
    for name, value in fields.items():
        if value is not None:
            doc[name] = redact(value) if isinstance(value, str) else value
    return orjson.dumps(doc)


def token_store_for(settings: Settings, *, in_memory: bool = False) -> TokenStore:
    """Where the Bitrix24 client keeps OAuth pairs: the tokens topic, shared by every
    replica, or this process's memory (the demo, tests)."""
    return MemoryTokenStore() if in_memory else KafkaTokenStore(settings)
