"""The service's own topics: created when missing, checked at start."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer.errors import ConfigError
from consumer.kafka.clients import client_config
from consumer.settings import Settings

logger = logging.getLogger(__name__)


class Topics:
    """Creates and checks the service's own topics (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin = AdminClient(client_config(settings))

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
