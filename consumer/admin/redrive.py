"""Redrive: replay dead-lettered events to their source topic, exactly once, in order.

Reads a dead-letter topic with its own consumer group (so a redrive resumes where it
stopped), keeps the records that match the filters, and in one Kafka transaction per
chunk produces them back to their original source partition (so each chat keeps its
order and its state owner) and commits its own offsets. A replay counter header guards
against loops; `--dry-run` only lists what would be replayed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from consumer.kafka.records import REDRIVE_HEADER, record_headers, record_position
from consumer.settings import Settings

_STRIP = ("__connect.errors.", "imconnector.error.", REDRIVE_HEADER)


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    """Which dead letters to replay (every set field must match)."""

    error_classes: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    chat: str | None = None

    def matches(self, headers: dict[str, bytes], key: bytes | None) -> bool:
        """True when the record's headers satisfy every filter."""
        if (
            self.error_classes
            and headers.get("imconnector.error.class", b"").decode() not in self.error_classes
        ):
            return False
        if self.codes and headers.get("imconnector.error.code", b"").decode() not in self.codes:
            return False
        failed_at = int(headers.get("imconnector.error.last_failure_ms", b"0") or 0)
        if self.since_ms is not None and failed_at < self.since_ms:
            return False
        if self.until_ms is not None and failed_at > self.until_ms:
            return False
        return self.chat is None or (key or b"").decode(errors="replace") == self.chat


@dataclass(slots=True)
class RedriveReport:
    """What a redrive did."""

    redriven: int = 0
    filtered_out: int = 0
    loop_guarded: int = 0
    by_class: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """One human line."""
        classes = ", ".join(f"{k}={v}" for k, v in sorted(self.by_class.items())) or "none"
        return (
            f"redriven {self.redriven} ({classes}); skipped by filters {self.filtered_out}; "
            f"stopped by the loop guard {self.loop_guarded}"
        )


def parse_time(text: str | None) -> int | None:
    """ISO 8601 (or epoch ms) -> epoch milliseconds."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def redrive(
    settings: Settings,
    source_topic: str,
    *,
    filters: RedriveFilter,
    dry_run: bool = False,
    rate: float = 0.0,
    max_redrives: int = 3,
    chunk: int = 200,
    group: str | None = None,
    out: TextIO = sys.stderr,
) -> RedriveReport:
    """Replay the matching dead letters of `source_topic`; see the module docstring.

    The redrive group's committed offsets mark what was examined, matching or not; use a
    new `group` for a second campaign with different filters over the same records.
    """
    dlq = settings.dlq_topic(source_topic)
    group = group or f"{settings.group_id}.redrive"
    conf = settings.kafka.librdkafka()
    consumer = Consumer(
        {
            **conf,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    producer: Producer | None = None
    if not dry_run:
        producer = Producer(
            {
                **conf,
                "transactional.id": f"{group}.{settings.instance_id}",
                "enable.idempotence": True,
            }
        )
        producer.init_transactions(30)
    report = RedriveReport()
    try:
        meta = consumer.list_topics(timeout=10).topics.get(dlq)
        if meta is None or meta.error is not None:
            out.write(f"dead-letter topic {dlq} does not exist: nothing to redrive\n")
            return report
        partitions = sorted(meta.partitions)
        # Stop at the end as it is now, so replays that fail again are not re-read.
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(dlq, p), timeout=10)[1]
            for p in partitions
        }
        committed = consumer.committed([TopicPartition(dlq, p) for p in partitions], timeout=10)
        starts = {tp.partition: max(tp.offset, 0) for tp in committed}
        total = sum(max(0, ends[p] - starts[p]) for p in partitions)
        consumer.assign(
            [TopicPartition(dlq, p, starts[p]) for p in partitions if starts[p] < ends[p]]
        )
        remaining = {p for p in partitions if starts[p] < ends[p]}
        seen = 0
        pending: list[Message] = []
        last_offsets: dict[int, int] = {}
        while remaining:
            for msg in consumer.consume(500, timeout=1.0):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(record_position_eof(msg))
                        continue
                    raise RuntimeError(f"reading {dlq}: {error.str()}")
                _, partition, offset = record_position(msg)
                if offset >= ends[partition]:
                    remaining.discard(partition)
                    continue
                seen += 1
                last_offsets[partition] = offset
                if offset + 1 >= ends[partition]:
                    remaining.discard(partition)
                headers = dict(record_headers(msg))
                if not filters.matches(headers, msg.key()):
                    report.filtered_out += 1
                    continue
                count = int(headers.get(REDRIVE_HEADER, b"0") or 0)
                if count >= max_redrives:
                    report.loop_guarded += 1
                    continue
                pending.append(msg)
                if dry_run:
                    _list(msg, headers, out)
                if len(pending) >= chunk:
                    _flush(
                        producer, consumer, source_topic, pending, last_offsets, dlq, report, rate
                    )
                    pending = []
            _progress(seen, total, out)
        _flush(producer, consumer, source_topic, pending, last_offsets, dlq, report, rate)
    finally:
        consumer.close()
    out.write("\n" + ("dry run: " if dry_run else "") + report.summary() + "\n")
    return report


def _list(msg: Message, headers: dict[str, bytes], out: TextIO) -> None:
    failed = int(headers.get("imconnector.error.last_failure_ms", b"0") or 0)
    when = (
        datetime.fromtimestamp(failed / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if failed else "-"
    )
    out.write(
        f"  [{msg.partition()}@{msg.offset()}] {when} "
        f"{headers.get('imconnector.error.class', b'?').decode()}/"
        f"{headers.get('imconnector.error.code', b'?').decode()} "
        f"chat={(msg.key() or b'').decode(errors='replace')} "
        f"event={headers.get('imconnector.event_id', b'-').decode()}\n"
    )


def _flush(
    producer: Producer | None,
    consumer: Consumer,
    source: str,
    pending: list[Message],
    last_offsets: dict[int, int],
    dlq: str,
    report: RedriveReport,
    rate: float,
) -> None:
    """Produce one chunk and commit the DLQ offsets read so far, in one transaction."""
    if producer is None:  # dry run: count, commit nothing
        for msg in pending:
            report.redriven += 1
            report.by_class[_header(msg, "imconnector.error.class")] += 1
        return
    producer.begin_transaction()
    for msg in pending:
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in record_headers(msg) if not k.startswith(_STRIP)
        ]
        count = int(_header(msg, REDRIVE_HEADER) or 0)
        headers.append((REDRIVE_HEADER, str(count + 1).encode()))
        partition = int(_header(msg, "__connect.errors.partition") or record_position(msg)[1])
        producer.produce(
            source, key=msg.key(), value=msg.value(), headers=headers, partition=partition
        )
        report.redriven += 1
        report.by_class[_header(msg, "imconnector.error.class")] += 1
        if rate > 0:
            producer.poll(0)
            time.sleep(1.0 / rate)
    offsets = [TopicPartition(dlq, p, o + 1) for p, o in last_offsets.items()]
    if offsets:
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(60)


def _header(msg: Message, name: str) -> str:
    for key, value in record_headers(msg):
        if key == name:
            return value.decode(errors="replace")
    return ""


def record_position_eof(msg: Message) -> int:
    """The partition of an end-of-partition event."""
    partition = msg.partition()
    assert partition is not None
    return partition


def _progress(done: int, total: int, out: TextIO) -> None:
    if total <= 0:
        return
    width = 30
    filled = int(width * min(done, total) / total)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    out.flush()
