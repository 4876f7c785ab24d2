"""The service's own topics: created when missing, checked at start."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

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
        """Create missing topics, check the existing ones; return source topic ->
        partition count. A changelog that is not compacted or not co-partitioned with its
        source, or a token topic that is not compacted, refuses the start (`ConfigError`,
        one line saying what to fix)."""
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
        compacted = {"cleanup.policy": "compact"}
        wanted: list[NewTopic] = []
        for topic, n in counts.items():
            changelog = s.changelog_topic(topic)
            existing = self.partitions_of(changelog)
            if existing is None:
                changelog_config = {
                    **compacted,
                    "min.compaction.lag.ms": "0",
                    "segment.ms": "3600000",
                }
                wanted.append(self._new(changelog, n, changelog_config))
            elif existing != n:
                raise ConfigError(
                    f"changelog {changelog!r} has {existing} partitions but source {topic!r} has "
                    f"{n}: they must be co-partitioned (recreate the changelog with {n})"
                )
            else:
                self._require_compacted(changelog, "IMCONNECTOR_CHANGELOG_TOPIC_TEMPLATE")
            dlq = s.dlq_topic(topic)
            if self.partitions_of(dlq) is None:
                wanted.append(self._new(dlq, n))
        if self.partitions_of(s.outcomes_topic) is None:
            wanted.append(self._new(s.outcomes_topic, max(counts.values())))
        if self.partitions_of(s.tokens_topic) is None:
            wanted.append(self._new(s.tokens_topic, 1, compacted))
        else:
            self._require_compacted(s.tokens_topic, "IMCONNECTOR_TOKENS_TOPIC")
        self._create(wanted)
        return counts

    def _new(self, topic: str, partitions: int, config: dict[str, str] | None = None) -> NewTopic:
        """A topic of the service's own, replicated as the settings say (default: as the
        broker's defaults say)."""
        settings = self._settings.topics
        config = dict(config or {})
        if settings.min_insync_replicas is not None:
            config["min.insync.replicas"] = str(settings.min_insync_replicas)
        return NewTopic(topic, partitions, settings.replication_factor, config=config)

    def _require_compacted(self, topic: str, setting: str) -> None:
        policy = self.configs(topic).get("cleanup.policy", "")
        if "compact" not in policy.split(","):
            raise ConfigError(
                f"topic {topic!r} has cleanup.policy={policy!r} but must be compacted: set "
                f"cleanup.policy=compact on it, or point {setting} at another topic"
            )

    def configs(self, topic: str) -> dict[str, str]:
        """The topic's configuration (broker defaults included)."""
        resource = ConfigResource(ResourceType.TOPIC, topic)
        entries = self._admin.describe_configs([resource])[resource].result(30)
        return {name: entry.value for name, entry in entries.items() if entry.value is not None}

    def record_limits(self, producer_limit: int) -> dict[str, int]:
        """Topic -> the largest record the service may write to it: its
        `max.message.bytes`, at most the producer's `message.max.bytes`, less room for the
        record's framing. Read at start for every topic the service writes to."""
        s = self._settings
        topics = [s.outcomes_topic, s.tokens_topic]
        for topic in s.source_topics:
            topics += [s.changelog_topic(topic), s.dlq_topic(topic)]
        limits = {}
        for topic in topics:
            topic_limit = int(self.configs(topic).get("max.message.bytes", 1_048_588))
            limits[topic] = min(topic_limit, producer_limit) - 1024
        return limits

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
