"""Reading one partition of a compacted topic from start to end (changelog, tokens)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition


def read_partition_to_end(
    reader: Consumer, topic: str, partition: int, timeout: float = 60.0
) -> Iterable[tuple[bytes, bytes | None]]:
    """Yield `(key, value)` of every committed record of one partition, start to end.

    `reader` reads committed data only with partition EOF events on (`restore_reader`),
    so an open transaction of a dead process (not yet aborted) is not restored.
    """
    low, high = watermarks(reader, topic, partition)
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


def watermarks(reader: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """`(low, high)` of one partition, waiting a little for a topic created a moment ago."""
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
