"""Where operator events go: the operator-events topic, through one of two producers.

`TransactionalSink` (pull): a batch fetched from the offline queue is written in one Kafka
transaction with a transactional id of its own, so it is all committed or not at all
before the queue is cleared. `AcknowledgedSink` (push): an idempotent producer; `store`
returns once Kafka acknowledged every record, so the HTTP answer can say so. Both raise
`KafkaUnavailable` when Kafka does not take the records in time: the caller keeps the
events (pull) or answers 503 (push).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer.codec.registry import SchemaRegistryClient
from consumer.errors import ConfigError
from consumer.inbound.contract import OperatorEvent, OperatorEventEncoder
from consumer.kafka.clients import producer_config
from consumer.kafka.topics import Topics
from consumer.settings import Settings

logger = logging.getLogger(__name__)


class KafkaUnavailable(Exception):
    """Kafka did not take the records (in time); nothing may be acknowledged or cleared."""


def encoder_for(settings: Settings) -> OperatorEventEncoder:
    """The encoder of the configured wire format (Confluent framing registers the schema)."""
    inbound = settings.inbound
    if inbound.wire == "confluent":
        if settings.schema_registry_url is None:
            raise ConfigError(
                "IMCONNECTOR_INBOUND__WIRE=confluent needs IMCONNECTOR_SCHEMA_REGISTRY_URL"
            )
        registry = SchemaRegistryClient(settings.schema_registry_url)
        return OperatorEventEncoder("confluent", registry, subject=f"{inbound.topic}-value")
    return OperatorEventEncoder("single-object")


def ensure_topic(settings: Settings) -> None:
    """Create the operator-events topic when it is missing, and the tokens topic the pull
    loop's OAuth pairs live in (compacted, as the engine creates it): `events pull` may
    run before, or without, the service."""
    inbound = settings.inbound
    topics = Topics(settings)
    wanted = []
    if topics.partitions_of(inbound.topic) is None:
        wanted.append(NewTopic(inbound.topic, inbound.topic_partitions, 1))
    if topics.partitions_of(settings.tokens_topic) is None:
        wanted.append(NewTopic(settings.tokens_topic, 1, 1, config={"cleanup.policy": "compact"}))
    if not wanted:
        return
    admin = AdminClient(settings.kafka.librdkafka())
    for topic, future in admin.create_topics(wanted).items():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        logger.info("created topic %s", topic)


def _headers(event: OperatorEvent) -> list[tuple[str, str | bytes | None]]:
    # Readers can route or deduplicate without decoding the value.
    return [("event_id", event.event_id.encode()), ("kind", event.kind.encode())]


class TransactionalSink:
    """All records of one batch in one Kafka transaction (the pull loop's producer)."""

    def __init__(self, settings: Settings, encoder: OperatorEventEncoder | None = None) -> None:
        self._settings = settings
        self._topic = settings.inbound.topic
        self._timeout = settings.inbound.produce_timeout_s
        self._encoder = encoder or encoder_for(settings)
        self._producer: Producer | None = None

    @property
    def transactional_id(self) -> str:
        """Its own id, apart from the engine's: a restarted puller fences its zombie."""
        s = self._settings
        return f"imconnector-{s.group_id}-{s.instance_id}-inbound-pull"

    def _ready_producer(self) -> Producer:
        if self._producer is None:
            conf = producer_config(
                self._settings,
                **{
                    "transactional.id": self.transactional_id,
                    "client.id": f"imconnector-{self._settings.instance_id}-inbound-pull",
                    "transaction.timeout.ms": max(10_000, int(self._timeout * 2000)),
                },
            )
            producer = Producer(conf)
            try:
                producer.init_transactions(self._timeout)
            except KafkaException as exc:
                raise KafkaUnavailable(f"init_transactions: {exc.args[0]}") from None
            self._producer = producer
        return self._producer

    def commit(self, events: Sequence[OperatorEvent]) -> None:
        """Write `events` in one transaction; returns once it is committed."""
        if not events:
            return
        producer = self._ready_producer()
        try:
            producer.begin_transaction()
            for event in events:
                producer.produce(
                    self._topic,
                    key=event.key.encode(),
                    value=self._encoder.encode(event),
                    headers=_headers(event),
                )
            producer.commit_transaction(self._timeout)
        except (KafkaException, BufferError) as exc:
            error = exc.args[0] if exc.args else exc
            self._discard(producer)
            raise KafkaUnavailable(f"transaction not committed: {error}") from None

    def _discard(self, producer: Producer) -> None:
        """After a failed transaction: abort it, and start from a fresh producer next time
        (init_transactions fences whatever the old one left open)."""
        with contextlib.suppress(KafkaException):
            producer.abort_transaction(min(self._timeout, 5.0))
        self._producer = None

    def close(self) -> None:
        """Abort anything open (a committed batch is not affected)."""
        if self._producer is not None:
            with contextlib.suppress(KafkaException):
                self._producer.abort_transaction(5)
            self._producer = None


class AcknowledgedSink:
    """An idempotent producer whose `store` waits for the broker's acknowledgements."""

    def __init__(self, settings: Settings, encoder: OperatorEventEncoder | None = None) -> None:
        inbound = settings.inbound
        self._topic = inbound.topic
        self._timeout = inbound.produce_timeout_s
        self._encoder = encoder or encoder_for(settings)
        conf: dict[str, Any] = {
            **settings.kafka.librdkafka(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            # librdkafka gives up about when the handler answers 503.
            "message.timeout.ms": int(self._timeout * 1000),
            "client.id": f"imconnector-{settings.instance_id}-inbound-push",
        }
        self._producer = Producer(conf)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="inbound-push-acks", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)  # runs the delivery callbacks

    def store(self, events: Sequence[OperatorEvent]) -> None:
        """Produce `events` and wait until Kafka acknowledged all of them."""
        remaining = len(events)
        failures: list[str] = []
        done = threading.Event()
        lock = threading.Lock()

        def acknowledged(error: KafkaError | None, _msg: object) -> None:
            nonlocal remaining
            with lock:
                if error is not None:
                    failures.append(error.str())
                remaining -= 1
                if remaining == 0:
                    done.set()

        try:
            for event in events:
                self._producer.produce(
                    self._topic,
                    key=event.key.encode(),
                    value=self._encoder.encode(event),
                    headers=_headers(event),
                    on_delivery=acknowledged,
                )
        except (KafkaException, BufferError) as exc:
            raise KafkaUnavailable(f"not queued: {exc}") from None
        if not done.wait(self._timeout + 1.0):
            raise KafkaUnavailable(f"not acknowledged within {self._timeout:.0f} s")
        if failures:
            raise KafkaUnavailable(f"not acknowledged: {failures[0]}")

    def close(self) -> None:
        """Deliver what is queued (briefly), then stop the poller."""
        self._producer.flush(min(self._timeout, 5.0))
        self._stop.set()
        self._poller.join(timeout=2)
