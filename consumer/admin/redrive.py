"""Redrive: replay dead-lettered events to their source topic, exactly once, in order.

Reads a dead-letter topic with its own consumer group (so a redrive resumes where it
stopped), keeps the records that match the filters, and in one Kafka transaction per
chunk produces them back to their original source partition (so each chat keeps its
order and its state owner) and commits its own offsets. With `--rate` a chunk is cut
into time slices, one transaction each, so a slow rate never outlives the transaction
timeout. A replay counter header guards against loops; `--dry-run` only lists what would
be replayed (`--json`: as one JSON document).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from consumer.kafka.clients import client_config
from consumer.kafka.records import REDRIVE_HEADER, record_headers, record_position
from consumer.settings import Settings

# librdkafka's default transaction.timeout.ms; a slice takes at most a third of it.
_TRANSACTION_TIMEOUT_MS = 60_000

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

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "redriven": self.redriven,
            "filtered_out": self.filtered_out,
            "loop_guarded": self.loop_guarded,
            "by_class": dict(sorted(self.by_class.items())),
        }

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
    as_json: TextIO | None = None,
) -> RedriveReport:
    """Replay the matching dead letters of `source_topic`; see the module docstring.

    The redrive group's committed offsets mark what was examined, matching or not; use a
    new `group` for a second campaign with different filters over the same records.
    Progress goes to `out` only when it is a terminal; with `as_json` the listing and the
    report are written there as one JSON document instead of lines on `out`.
    """
    dlq = settings.dlq_topic(source_topic)
    group = group or f"{settings.group_id}.redrive"
    conf = client_config(settings)
    listed: list[dict[str, Any]] = []
    progress = _isatty(out) and as_json is None
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
        producer_conf = {
            "transaction.timeout.ms": _TRANSACTION_TIMEOUT_MS,
            **conf,
            "transactional.id": f"{group}.{settings.instance_id}",
            "enable.idempotence": True,
        }
        producer = Producer(producer_conf)
        producer.init_transactions(30)
        slice_s = int(producer_conf["transaction.timeout.ms"]) / 1000 / 3
    else:
        slice_s = 0.0
    pacer = Pacer(rate, slice_s)
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
                    row = _listing(msg, headers)
                    if as_json is not None:
                        listed.append(row)
                    else:
                        out.write(_listing_line(row))
                if len(pending) >= chunk:
                    _flush(
                        producer, consumer, source_topic, pending, last_offsets, dlq, report, pacer
                    )
                    pending = []
            if progress:
                _progress(seen, total, out)
        _flush(producer, consumer, source_topic, pending, last_offsets, dlq, report, pacer)
    finally:
        consumer.close()
    if as_json is not None:
        document = {"dry_run": dry_run, "dead_letter_topic": dlq, **report.as_dict()}
        if dry_run:
            document["records"] = listed
        as_json.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(("\n" if progress else "") + ("dry run: " if dry_run else ""))
        out.write(report.summary() + "\n")
    return report


def _listing(msg: Message, headers: dict[str, bytes]) -> dict[str, Any]:
    failed = int(headers.get("imconnector.error.last_failure_ms", b"0") or 0)
    return {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "last_failure_ms": failed or None,
        "error_class": headers.get("imconnector.error.class", b"?").decode(),
        "code": headers.get("imconnector.error.code", b"?").decode(),
        "chat": (msg.key() or b"").decode(errors="replace"),
        "event_id": headers.get("imconnector.event_id", b"-").decode(),
    }


def _listing_line(row: dict[str, Any]) -> str:
    failed = row["last_failure_ms"]
    when = (
        datetime.fromtimestamp(failed / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if failed else "-"
    )
    return (
        f"  [{row['partition']}@{row['offset']}] {when} {row['error_class']}/{row['code']} "
        f"chat={row['chat']} event={row['event_id']}\n"
    )


class Pacer:
    """`rate` records per second, cut into transactions of at most `slice_s` seconds."""

    def __init__(
        self,
        rate: float,
        slice_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.slice_s = slice_s
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0

    def wait_turn(self) -> None:
        """Sleep until the next record may go (no wait without a rate)."""
        if self.rate <= 0:
            return
        now = self.clock()
        self._next = max(self._next, now)
        if self._next > now:
            self.sleep(self._next - now)
        self._next += 1.0 / self.rate

    def ends_slice(self, began: float) -> bool:
        """Would waiting for the next turn take the transaction begun at `began` past its
        time slice? (Only with a rate.)"""
        if self.rate <= 0:
            return False
        now = self.clock()
        return max(self._next, now) - began >= self.slice_s


def _flush(
    producer: Producer | None,
    consumer: Consumer,
    source: str,
    pending: list[Message],
    last_offsets: dict[int, int],
    dlq: str,
    report: RedriveReport,
    pacer: Pacer,
) -> None:
    """Produce one chunk and commit the DLQ offsets read so far: in one transaction, or
    with a rate one per time slice, each with the offsets of what it produced."""
    if producer is None:  # dry run: count, commit nothing
        for msg in pending:
            report.redriven += 1
            report.by_class[_header(msg, "imconnector.error.class")] += 1
        return
    group = consumer.consumer_group_metadata()
    open_since: float | None = None  # when the open transaction began
    produced: dict[int, int] = {}
    for msg in pending:
        # Commit before a wait that would carry the open transaction past its slice.
        if open_since is not None and pacer.ends_slice(open_since):
            offsets = [TopicPartition(dlq, p, o + 1) for p, o in produced.items()]
            producer.send_offsets_to_transaction(offsets, group, 30)
            producer.commit_transaction(60)
            open_since = None
        pacer.wait_turn()
        if open_since is None:
            producer.begin_transaction()
            open_since = pacer.clock()
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in record_headers(msg) if not k.startswith(_STRIP)
        ]
        count = int(_header(msg, REDRIVE_HEADER) or 0)
        headers.append((REDRIVE_HEADER, str(count + 1).encode()))
        partition = int(_header(msg, "__connect.errors.partition") or record_position(msg)[1])
        producer.produce(
            source, key=msg.key(), value=msg.value(), headers=headers, partition=partition
        )
        _, dlq_partition, dlq_offset = record_position(msg)
        produced[dlq_partition] = dlq_offset
        report.redriven += 1
        report.by_class[_header(msg, "imconnector.error.class")] += 1
        producer.poll(0)
    if open_since is None:
        producer.begin_transaction()
    offsets = [TopicPartition(dlq, p, o + 1) for p, o in last_offsets.items()]
    if offsets:
        producer.send_offsets_to_transaction(offsets, group, 30)
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


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: not a terminal
        return False


def _progress(done: int, total: int, out: TextIO) -> None:
    if total <= 0:
        return
    width = 30
    filled = int(width * min(done, total) / total)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    out.flush()
