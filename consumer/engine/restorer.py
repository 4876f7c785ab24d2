"""Restoring assigned partitions from their changelogs, a slice at a time from the poll loop.

A restore of many chats takes a while. Done inside the group's rebalance callback it would
block the poll loop (the liveness probe sees a dead loop, and `max.poll.interval.ms` can
expire); so the callback only pauses the new partitions, and the loop feeds the changelog
records to their stores between its other work until each partition reaches its end.
One group-less reader reads every changelog partition being restored.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.kafka.clients import restore_reader
from consumer.kafka.restore import watermarks
from consumer.settings import Settings
from consumer.store.changelog import PartitionStore

Target = tuple[str, int]  # changelog topic, partition


class Restorer:
    """Feeds changelog partitions into their stores."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._reader: Consumer | None = None
        self._stores: dict[Target, PartitionStore] = {}

    def __len__(self) -> int:
        return len(self._stores)

    def add(self, changelog: str, partition: int, store: PartitionStore) -> bool:
        """Start restoring one partition; True when there is nothing to read."""
        reader = self._open()
        low, high = watermarks(reader, changelog, partition)
        if high <= low:
            return True
        self._stores[(changelog, partition)] = store
        reader.incremental_assign([TopicPartition(changelog, partition, low)])
        return False

    def remove(self, changelog: str, partition: int) -> None:
        """Stop restoring a partition (it was revoked meanwhile)."""
        if self._stores.pop((changelog, partition), None) is not None and self._reader:
            self._reader.incremental_unassign([TopicPartition(changelog, partition)])

    def step(self, budget_s: float) -> list[Target]:
        """Read for about `budget_s` seconds; return the partitions read to their end."""
        if not self._stores or self._reader is None:
            return []
        reader = self._reader
        finished: list[Target] = []
        deadline = time.monotonic() + budget_s
        while self._stores and time.monotonic() < deadline:
            messages = reader.consume(num_messages=10_000, timeout=0.01)
            if not messages:
                continue
            for msg in messages:
                target = (msg.topic() or "", msg.partition() or 0)
                store = self._stores.get(target)
                if store is None:
                    continue  # removed meanwhile
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    del self._stores[target]
                    reader.incremental_unassign([TopicPartition(*target)])
                    finished.append(target)
                    continue
                key = msg.key()
                if key is not None:
                    store.load(key, msg.value())
        return finished

    def close(self) -> None:
        """Close the reader."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._stores.clear()

    def _open(self) -> Consumer:
        if self._reader is None:
            self._reader = restore_reader(self._settings)
        return self._reader
