"""The engine: consume -> decode -> order/dedup -> fold -> dispatch -> commit (architecture §3).

One poll thread owns all Kafka state; Bitrix24 calls run on the dispatcher's loop. Every
`commit` is one Kafka transaction carrying changed chat states (changelog), outcome and
dead-letter records, and the consumed offsets. A chat's calls wait in its state's outbox,
so an event is durable as soon as its decision is committed; a call is marked in flight
in a committed transaction *before* its request leaves (the send ledger), so after a
crash an in-flight call is known to have an unknown outcome.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.codec import ChatEventDecoder, SchemaRegistryClient
from consumer.core.events import ChatEvent
from consumer.core.fold import (
    FoldConfig,
    Outcome,
    new_call,
    on_event,
    on_failure,
    on_late,
    on_restore,
    on_success,
    on_tick,
)
from consumer.core.mapping import BATCHABLE, RENAME
from consumer.core.ordering import Lane, Offer, admit, classify
from consumer.core.state import (
    IN_FLIGHT,
    QUEUED,
    ChatState,
    PendingCall,
    block_key,
    body_key,
    decode_block,
    encode_block,
    is_block_key,
    parse_body_key,
)
from consumer.dispatch.dispatcher import Batch, BatchDone, DispatchPort
from consumer.errors import PoisonRecord, RegistryUnavailable
from consumer.kafka.clients import consumer_config, producer_config, restore_reader
from consumer.kafka.records import (
    Headers,
    dead_letter_headers,
    outcome_record,
    record_headers,
    record_position,
)
from consumer.kafka.restore import read_partition_to_end
from consumer.kafka.topics import Topics
from consumer.observability.metrics import Metrics
from consumer.settings import Settings

logger = logging.getLogger(__name__)

REDRIVE_HEADER = "imconnector.redrive.count"
BLOCK_BYTES = 256 * 1024  # a block of call bodies is closed at this size (Kafka's limit is 1 MB)
# A block down to a quarter of its calls for this long has them written again into a new
# one and goes: a few long-waiting calls (an outage of one portal) must not keep the
# bodies of every call they shared a commit with.
REHOME_AFTER_S = 60.0
# A chat idle this long is kept as its changelog record (a few hundred bytes) until its
# next event. Not at once: most chats of a busy line get their next event within seconds,
# and decoding the record again each time cost a twentieth of the loop's CPU.
COMPACT_AFTER_MS = 60_000
PRODUCE_CHUNK = 10_000  # records per produce_batch call
_ACTIVITY = re.compile(rb'"a":(\d+)')


@dataclass(slots=True)
class Held:
    """An event waiting in a reorder buffer for a sequence gap to fill."""

    event: ChatEvent
    offset: int
    raw: bytes
    raw_key: bytes
    headers: tuple[tuple[str, bytes], ...]
    redrive: bool


@dataclass(slots=True)
class Block:
    """A block record of call bodies: how many of its calls are still waiting, how many it
    was written with, and when (monotonic; the restore time for a restored one)."""

    live: int
    size: int
    born: float


@dataclass(slots=True)
class PartitionWork:
    """Everything the engine keeps for one assigned source partition."""

    topic: str
    partition: int
    epoch: int
    states: dict[str, ChatState | bytes] = field(default_factory=dict)
    lanes: dict[str, Lane[Held]] = field(default_factory=dict)  # chats holding a gap
    held_offsets: set[int] = field(default_factory=set)
    held_renames: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    tombstones: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    ready: set[str] = field(default_factory=set)
    next_offset: int = -1
    committed: int = -1
    pending: int = 0  # calls in outboxes + held renames
    crowded: set[str] = field(default_factory=set)  # outbox at max_buffered_per_chat
    paused: bool = False
    revoking: bool = False
    caught_up_ms: int = 0  # when the partition was last read to its end
    rewind_until: float = 0.0
    # Call bodies in the changelog (see consumer.core.state): restored ones not yet attached to
    # their chat, the offsets written per chat, the block holding each (none for a body
    # record of its own, as written before blocks), the live blocks, and keys of body
    # records and blocks no chat refers to.
    bodies: dict[str, dict[int, bytes | list[Any]]] = field(default_factory=dict)
    stored: dict[str, set[int]] = field(default_factory=dict)
    block_of: dict[tuple[str, int], bytes] = field(default_factory=dict)
    blocks: dict[bytes, Block] = field(default_factory=dict)
    sparse: set[bytes] = field(default_factory=set)  # blocks to write again and delete
    orphans: set[bytes] = field(default_factory=set)

    def state(self, chat: str) -> ChatState:
        """The chat's state, decoded on first use after a restore."""
        value = self.states.get(chat)
        if value is None:
            fresh = ChatState()
            self.states[chat] = fresh
            return fresh
        if isinstance(value, bytes):
            bodies = self.bodies.pop(chat, {})
            decoded = ChatState.from_bytes(value, bodies)
            referred = {call.offset for call in decoded.calls()}
            if referred:
                self.stored[chat] = referred
            for offset in bodies.keys() - referred:
                self.unreferenced(chat, offset)
            self.states[chat] = decoded
            return decoded
        return value

    def unreferenced(self, chat: str, offset: int) -> None:
        """A restored body no chat refers to: its own record goes; its block's place is
        given up (the block goes once none of its calls is live, see `Engine._restore`)."""
        if self.block_of.pop((chat, offset), None) is None:
            self.orphans.add(body_key(chat, offset))

    def sweep(self, now_ms: int, ttl_ms: int, idle_ms: int = COMPACT_AFTER_MS) -> int:
        """One pass over the chats with nothing waiting, in flight or held: expire those
        idle past `ttl_ms` (tombstones keep the changelog compact), keep those idle for
        `idle_ms` as their changelog records. Returns how many were compacted."""
        compacted = 0
        for chat, value in list(self.states.items()):
            if chat in self.busy or chat in self.lanes:
                continue
            if isinstance(value, bytes):
                match = _ACTIVITY.search(value)
                active = int(match.group(1)) if match else now_ms
                idle = b'"o"' not in value and b'"h"' not in value and b'"p"' not in value
            else:
                active, idle = value.last_activity_ms, value.is_idle()
            if not idle:
                continue
            if now_ms - active > ttl_ms:
                del self.states[chat]
                self.tombstones.add(chat)
                self.dirty.add(chat)
            elif now_ms - active > idle_ms and isinstance(value, ChatState):
                if value.recent_ids:
                    continue  # chats deduplicated by event id stay decoded
                self.states[chat] = value.to_bytes()
                compacted += 1
        return compacted

    def committable(self) -> int:
        """The offset to commit: nothing past an event still waiting in a reorder buffer."""
        if self.held_offsets:
            return min(self.held_offsets)
        return self.next_offset


@dataclass(slots=True)
class Committing:
    """A transaction being committed on the committer thread, and what waits for it: the
    outputs to write again if it is aborted, the chats whose states it carries, and the
    requests whose in-flight marks it makes durable (they leave once it is committed)."""

    offsets: list[TopicPartition]
    outputs: list[tuple[str, bytes, bytes | None, Headers | None, int | None]]
    chats: list[tuple[PartitionWork, str]]
    batches: list[Batch]
    started: float
    done: Future[float]


def _opened(lane: tuple[int, str, PartitionWork]) -> int:
    return lane[0]


def _outbox_of(work: PartitionWork, chat: str) -> int:
    state = work.states.get(chat)
    return len(state.outbox) if isinstance(state, ChatState) else 0


def _pending_of(state: ChatState) -> int:
    return len(state.outbox) + (state.held_rename is not None)


class Engine:
    """Runs the service loop until `stop()`; safe to run in a thread (tests) or as `main`."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        dispatcher: DispatchPort,
        *,
        clock: Callable[[], float] = time.time,
        create_sources: bool = False,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.dispatcher = dispatcher
        self.clock = clock
        # The transactional producer's maker: a test passes a subclass that watches
        # the transactions.
        self._producer_factory = producer_factory
        self._create_sources = create_sources
        engine = settings.engine
        self.fold_config = FoldConfig(
            rename_wait_timeout_ms=int(engine.rename_wait_timeout_s * 1000),
            send_status_reading=engine.send_status_reading,
        )
        self._registry = (
            SchemaRegistryClient(settings.schema_registry_url)
            if settings.schema_registry_url
            else None
        )
        self.decoder = ChatEventDecoder(self._registry)
        self.parts: dict[tuple[str, int], PartitionWork] = {}
        self._epoch = 0
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._last_commit = 0.0
        self._outputs_since_commit = 0
        self._txn_outputs: list[tuple[str, bytes, bytes | None, Headers | None, int | None]] = []
        # Records of the open transaction not yet handed to librdkafka, by topic/partition
        # (None: the key decides), in the order they were made.
        self._unsent: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        self._unsent_headed: list[tuple[str, dict[str, Any]]] = []  # dead letters
        # The transaction being committed while the loop goes on (at most one), and the
        # thread that commits it.
        self._committing: Committing | None = None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="kafka-commit")
        self._queue_room = 100_000
        self._chunk = PRODUCE_CHUNK
        self._last_tick = 0.0
        self._last_gauges = 0.0
        self._ready_queues: dict[tuple[str, str, int, str], deque[tuple[PartitionWork, str]]] = {}
        self._ready_since: dict[tuple[str, str, int, str], float] = {}
        self._last_sweep = 0.0
        self._restoring = 0
        self.assigned = False
        self.started = threading.Event()
        # Per-record counts add up here and reach their Prometheus counters once per loop
        # iteration: a counter's inc takes a lock, twice per event otherwise.
        self._consumed = dict.fromkeys(settings.source_topics, 0)
        self._outcome_counts: dict[str, int] = {}
        self._per_chat = settings.engine.max_buffered_per_chat
        self._writer = uuid.uuid4().hex[:12]  # names this run's blocks of call bodies
        self._blocks = 0

    # -- life cycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to drain and exit (SIGTERM)."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Assigned partitions restored and not shutting down."""
        return self.assigned and self._restoring == 0 and not self._stop.is_set()

    def run(self) -> None:
        """Provision topics, join the group and process until stopped."""
        settings = self.settings
        self.metrics.poll_heartbeat.set(self.clock())  # starting counts as alive
        topics = Topics(settings)
        topics.wait_for_cluster()
        topics.ensure(create_sources=self._create_sources)
        # Before the group is joined: a dispatcher that cannot start leaves nothing to undo
        # but itself, and from here on every way out goes through _close (a consumer left
        # unclosed blocks the interpreter's exit in librdkafka's destroy).
        self.dispatcher.start()
        try:
            producer_conf = producer_config(settings)
            self._producer = self._producer_factory(producer_conf)
            # librdkafka's queue limit (100,000 unless configured): a batch goes in whole.
            self._queue_room = int(producer_conf.get("queue.buffering.max.messages", 100_000))
            self._chunk = max(1, min(PRODUCE_CHUNK, self._queue_room // 2))
            self._producer.init_transactions(30)
            self._producer.begin_transaction()
            self._consumer = Consumer(consumer_config(settings, stats_cb=self.metrics.kafka.update))
            self._consumer.subscribe(
                settings.source_topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self.started.set()
            logger.info(
                "consuming %s as group %s (instance %s)",
                ",".join(settings.source_topics),
                settings.group_id,
                settings.instance_id,
            )
            while not self._stop.is_set():
                self._iteration()
            self._drain(settings.shutdown_grace_s)
        finally:
            self._close()

    def _close(self) -> None:
        consumer, producer = self._consumer, self._producer
        try:  # the producer must be idle before anything else touches it
            self._settle(submit=not self.dispatcher.lost)
        except KafkaException as exc:
            logger.warning("the last transaction failed: %s", exc)
        if consumer is not None:
            try:
                consumer.close()  # revokes (drain + commit via _on_revoke) and leaves the group
            except KafkaException as exc:
                logger.warning("closing the consumer failed: %s", exc)
        if producer is not None:
            with contextlib.suppress(KafkaException):  # nothing open, or fenced: fine
                producer.abort_transaction(10)
                producer.flush(10)
        self._committer.shutdown(wait=True)
        self.dispatcher.stop()
        if self._registry is not None:
            self._registry.close()
        self._publish_counts()
        self.metrics.ready.set(0)

    def _drain(self, grace: float) -> None:
        """Stop fetching; let in-flight calls finish within `grace`; commit."""
        assert self._consumer is not None
        assigned = [TopicPartition(w.topic, w.partition) for w in self.parts.values()]
        if assigned:
            self._consumer.pause(assigned)
        self._settle()  # its requests leave, and are waited for like the others
        deadline = time.monotonic() + grace
        while (
            self.dispatcher.in_flight and time.monotonic() < deadline and not self.dispatcher.lost
        ):
            self.dispatcher.wait(0.05)
            self._apply_completions()
        self._commit()

    # -- the loop ------------------------------------------------------------------------
    def _iteration(self) -> None:
        assert self._consumer is not None and self._producer is not None
        now = time.monotonic()
        self.metrics.poll_heartbeat.set(self.clock())
        # consume() waits out its whole timeout unless the batch fills up, so take what
        # is there, and wait (only until the first record) when nothing is.
        messages = self._consumer.consume(num_messages=2000, timeout=0)
        if not messages:
            if self._committing is not None:
                timeout = 0.002  # its requests leave once it is done
            else:
                timeout = 0.005 if self.dispatcher.in_flight else 0.1
            messages = self._consumer.consume(num_messages=1, timeout=timeout)
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    eof = self.parts.get((msg.topic() or "", msg.partition() or 0))
                    if eof is not None:
                        eof.caught_up_ms = self._now_ms()
                    continue
                self._on_kafka_error(error)
                continue
            self._on_record(msg)
        self._apply_completions()
        if now - self._last_tick >= 0.2:
            self._tick(gauges=now - self._last_gauges >= 1.0)
            self._last_tick = now
        # The send ledger: a call's in-flight mark is committed before its request leaves,
        # so after a crash every call that may have reached the portal is known (and its
        # resend recorded). Idempotent methods too: a restart must not replay calls the
        # portal already took just because their completions were not committed yet.
        # The commit runs on the committer thread while this loop reads and folds on; its
        # requests leave when it is done, and the next round is planned then.
        if self._committing is not None:
            self._settle(wait=False)
        if self._committing is None:
            batches = self._plan()
            interval = self.settings.engine.commit_interval_ms / 1000
            if batches or now - self._last_commit >= interval:
                self._start_commit(batches)
        self._backpressure()
        self._producer.poll(0)
        self._publish_counts()
        self.metrics.ready.set(1 if self.ready else 0)

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        logger.warning("Kafka: %s", error.str())

    # -- records -------------------------------------------------------------------------
    def _on_record(self, msg: Message) -> None:
        topic, partition, offset = record_position(msg)
        work = self.parts.get((topic, partition))
        if work is None or work.rewind_until:
            return
        work.next_offset = offset + 1
        self._consumed[topic] += 1
        value = msg.value() or b""
        raw_key = msg.key() or b""
        headers = record_headers(msg)
        redrive = any(k == REDRIVE_HEADER for k, _ in headers)
        try:
            event = self.decoder.decode(value)
        except PoisonRecord as exc:
            self._dead_letter_poison(work, offset, value, raw_key, headers, exc)
            return
        except RegistryUnavailable as exc:
            # Not the record's fault: re-read it later instead of dead-lettering it.
            logger.error("%s; partition %s[%d] waits", exc, topic, partition)
            work.next_offset = offset
            work.rewind_until = time.monotonic() + 5.0
            assert self._consumer is not None
            self._consumer.seek(TopicPartition(topic, partition, offset))
            return
        self._admit(work, event, Held(event, offset, value, raw_key, headers, redrive))

    def _admit(self, work: PartitionWork, event: ChatEvent, held: Held) -> None:
        chat = event.key
        state = work.state(chat)
        lane = work.lanes.get(chat)
        if lane is None:
            # Nothing held for this chat: the next event in order, a redrive or a duplicate
            # needs no lane (the common case, so no per-event buffer objects).
            admission = classify(state, event)
            if admission == "duplicate":
                self._record_skip(work, chat, held, "duplicate")
                return
            if admission in ("new", "redrive"):
                admit(state, event, admission, self.settings.engine.dedup_window)
                self._apply(work, chat, state, held)
                return
            lane = Lane(
                self.settings.engine.reorder_buffer_per_chat,
                self.settings.engine.dedup_window,
                _event_of,
            )
        offer = lane.offer(state, held, self._now_ms())
        self._offered(work, chat, state, lane, offer, "chat_buffer_full")

    def _offered(
        self,
        work: PartitionWork,
        chat: str,
        state: ChatState,
        lane: Lane[Held],
        offer: Offer[Held],
        reason: str,
    ) -> None:
        """Apply what offering an event (or giving up a gap) did to a chat's lane; a gap
        given up is logged and counted with `reason` (timeout, chat_buffer_full,
        buffers_full)."""
        for item in offer.released:
            work.held_offsets.discard(item.offset)
        for item in offer.held:
            work.held_offsets.add(item.offset)
        if len(lane):
            work.lanes[chat] = lane
        else:
            work.lanes.pop(chat, None)
        for first, last in offer.gaps:
            logger.warning(
                "sequence gap %d..%d given up on (%s)",
                first,
                last,
                reason,
                extra={"chat": chat, "topic": work.topic, "partition": work.partition},
            )
            self.metrics.sequence_gaps.labels(reason=reason).inc()
            self._produce_outcome(chat, outcome_gap(chat, f"{first}..{last}"))
        if offer.gaps or offer.ready:
            work.dirty.add(chat)
        for item, admission in offer.ready:
            if admission == "duplicate":
                self._record_skip(work, chat, item, "duplicate")
            elif admission == "late":
                call = _call_for(work, state, item)
                self._after_change(work, chat, state, _pending_of(state), on_late(state, call))
            else:
                self._apply(work, chat, state, item)

    def _apply(self, work: PartitionWork, chat: str, state: ChatState, held: Held) -> None:
        before = _pending_of(state)
        call = _call_for(work, state, held)
        if held.redrive:
            call.redrive_count = _redrive_count(held.headers)
        outcomes = on_event(
            state, held.event, call, self._now_ms(), self.fold_config, redrive=held.redrive
        )
        self._after_change(work, chat, state, before, outcomes)

    def _after_change(
        self, work: PartitionWork, chat: str, state: ChatState, before: int, outcomes: list[Outcome]
    ) -> None:
        for outcome in outcomes:
            self._emit(chat, outcome)
        work.pending += _pending_of(state) - before
        if len(state.outbox) >= self._per_chat:
            work.crowded.add(chat)
        work.dirty.add(chat)
        work.tombstones.discard(chat)
        if state.held_rename is not None:
            work.held_renames.add(chat)
        else:
            work.held_renames.discard(chat)
        self._make_ready(work, chat, state)

    # -- outcomes and dead letters -------------------------------------------------------
    def _count_outcome(self, outcome: str) -> None:
        counts = self._outcome_counts
        counts[outcome] = counts.get(outcome, 0) + 1

    def _publish_counts(self) -> None:
        """The per-record counts since the last call, to their Prometheus counters."""
        for topic, count in self._consumed.items():
            if count:
                self.metrics.events_consumed.labels(topic=topic).inc(count)
                self._consumed[topic] = 0
        if self._outcome_counts:
            for outcome, count in self._outcome_counts.items():
                self.metrics.outcomes.labels(outcome=outcome).inc(count)
            self._outcome_counts = {}

    def _record_skip(self, work: PartitionWork, chat: str, held: Held, outcome: str) -> None:
        self._count_outcome(outcome)
        event = held.event
        self._produce_outcome(
            chat,
            outcome_record_raw(
                event.event_id,
                chat,
                event.sequence,
                event.kind,
                outcome,
                (work.topic, work.partition, held.offset),
            ),
        )

    def _emit(self, chat: str, outcome: Outcome) -> None:
        call = outcome.call
        if outcome.outcome == "ambiguous_resent":
            self.metrics.ambiguous_sends.labels(policy="resend").inc()
        else:
            self._count_outcome(outcome.outcome)
        if outcome.outcome == "applied":
            self.metrics.event_latency.observe(max(0.0, self.clock() - call.occurred_at / 1000))
        self._produce_outcome(
            chat,
            outcome_record(
                chat,
                call,
                outcome.outcome,
                error_class=outcome.error_class,
                code=outcome.code,
                message=outcome.message,
                http_status=outcome.http_status,
                result=outcome.result,
                attempts=call.attempts or None,
                redrive=call.redrive_count or None,
            ),
        )
        if outcome.outcome == "dead_lettered":
            assert outcome.error_class is not None
            self.metrics.dead_letters.labels(error_class=outcome.error_class).inc()
            headers = dead_letter_headers(
                call,
                group=self.settings.group_id,
                error_class=outcome.error_class,
                code=outcome.code,
                message=outcome.message,
                http_status=outcome.http_status,
                attempts=call.attempts,
                now_ms=self._now_ms(),
            )
            self._produce(
                self.settings.dlq_topic(call.origin[0]),
                call.raw_key or chat.encode(),
                call.raw,
                headers,
                partition=call.origin[1],
            )

    def _dead_letter_poison(
        self,
        work: PartitionWork,
        offset: int,
        value: bytes,
        raw_key: bytes,
        headers: tuple[tuple[str, bytes], ...],
        exc: PoisonRecord,
    ) -> None:
        call = PendingCall(
            "",
            None,
            "unknown",
            "",
            {},
            0,
            (work.topic, work.partition, offset),
            value,
            raw_key,
            headers,
        )
        logger.warning(
            "poison record dead-lettered: %s",
            exc,
            extra={"topic": work.topic, "partition": work.partition, "offset": offset},
        )
        self._emit(
            raw_key.decode(errors="replace"),
            Outcome(call, "dead_lettered", "poison", exc.code, str(exc)),
        )

    def _produce_outcome(self, chat: str, value: bytes) -> None:
        self._produce(self.settings.outcomes_topic, chat.encode(), value, None)

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: Headers | None,
        partition: int | None = None,
        replay: bool = True,
    ) -> None:
        """Keep a record for the open transaction; it reaches librdkafka when the
        transaction is committed (`_send_unsent`), after the one being committed."""
        if replay:  # kept until the transaction commits, to re-send if it is aborted
            self._txn_outputs.append((topic, key, value, headers, partition))
        self._outputs_since_commit += 1
        if headers:  # produce_batch takes no headers
            kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers}
            if partition is not None:
                kwargs["partition"] = partition
            self._unsent_headed.append((topic, kwargs))
            return
        lane = self._unsent.get((topic, partition))
        if lane is None:
            lane = self._unsent[(topic, partition)] = []
        lane.append({"key": key, "value": value})

    def _send_unsent(self) -> None:
        """Queue the records kept for this transaction in librdkafka: one `produce_batch`
        per topic and partition costs a third of a `produce` per record. Room is made
        first, so a full queue cannot fail a record in the middle and reorder its key."""
        assert self._producer is not None
        producer = self._producer
        for topic, kwargs in self._unsent_headed:
            while True:
                try:
                    producer.produce(topic, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain
        self._unsent_headed.clear()
        for (topic, partition), records in self._unsent.items():
            for start in range(0, len(records), self._chunk):
                chunk = records[start : start + self._chunk]
                while len(producer) + len(chunk) > self._queue_room:
                    producer.poll(0.05)  # let deliveries drain
                if partition is None:
                    queued = producer.produce_batch(topic, chunk)
                else:
                    queued = producer.produce_batch(topic, chunk, partition=partition)
                if queued != len(chunk):
                    error = next(r["_error"] for r in chunk if "_error" in r)
                    raise KafkaException(error)
        self._unsent.clear()

    # -- dispatch ------------------------------------------------------------------------
    def _make_ready(self, work: PartitionWork, chat: str, state: ChatState) -> None:
        """Queue the chat's head call for the next request of its method, once."""
        if state.outbox and chat not in work.busy and chat not in work.ready:
            work.ready.add(chat)
            self._enqueue(work, chat, state.outbox[0].method)

    def _enqueue(self, work: PartitionWork, chat: str, method: str) -> None:
        portal, connector, line, _ = chat.split("|", 3)
        group = (portal, connector, int(line), method)
        waiting = self._ready_queues.get(group)
        if waiting is None:
            waiting = self._ready_queues[group] = deque()
        if not waiting:
            self._ready_since[group] = time.monotonic()
        waiting.append((work, chat))

    def _plan(self) -> list[Batch]:
        """Turn queued head calls into requests; mark them in flight.

        Head calls wait in one FIFO queue per portal/connector/line/method. A queue becomes
        a request when it holds a full batch, when its oldest call has waited `linger_ms`
        and a request slot is free, or at once when nothing is in flight (an idle service
        adds no latency). Up to `max_in_flight_requests` requests run at once in the
        dispatcher; a new round (up to twice that many, one ledger commit) is planned once
        the previous round's requests have all started.
        """
        slots = self.settings.engine.max_in_flight_requests
        in_flight = self.dispatcher.in_flight
        if in_flight > slots:
            # Requests still queue behind busy slots: plan the next round once they have
            # all started, so one ledger commit covers a whole round instead of one batch.
            return []
        room = 2 * slots - in_flight
        size = self.settings.engine.batch_size
        linger = self.settings.engine.linger_ms / 1000
        now = time.monotonic()
        idle = not in_flight
        # A partial batch may leave only into a free slot: while every slot is busy, a
        # request would just queue behind the others, so its batch keeps filling instead.
        partial_ok = in_flight < slots
        batches: list[Batch] = []
        groups = sorted(
            (g for g, waiting in self._ready_queues.items() if waiting),
            key=self._ready_since.__getitem__,
        )
        for group in groups:
            if room <= 0:
                break
            portal, connector, line, method = group
            if not self.dispatcher.portal_has_capacity(portal):
                continue  # its calls pile up meanwhile, so the next request is a full one
            waiting = self._ready_queues[group]
            if method in BATCHABLE:
                limit = size
            elif method == RENAME:
                limit = min(size, self.dispatcher.rename_batch_limit(portal))
            else:
                limit = 1
            while waiting and room > 0:
                lingered = now - self._ready_since[group] >= linger
                if len(waiting) < limit and not (idle or (lingered and partial_ok)):
                    break  # let the batch fill up
                batch = Batch(portal, connector, line, method, [])
                while waiting and len(batch.calls) < limit:
                    self._take(batch, *waiting.popleft())
                if batch.calls:
                    batches.append(batch)
                    room -= 1
                    in_flight += 1
                    partial_ok = in_flight < slots
            if waiting:
                self._ready_since[group] = now
        return batches

    def _unplan(self, batches: list[Batch]) -> None:
        """Put planned calls back in their queues (their transaction was aborted)."""
        for batch in batches:
            for (chat, call), (topic, partition, epoch) in zip(
                batch.calls, batch.routes, strict=True
            ):
                work = self.parts.get((topic, partition))
                if work is None or work.epoch != epoch:
                    continue
                call.status = QUEUED
                call.attempts -= 1
                work.busy.discard(chat)
                work.dirty.add(chat)
                self._make_ready(work, chat, work.state(chat))

    def _take(self, batch: Batch, work: PartitionWork, chat: str) -> None:
        """Add a queued chat's head call to `batch`, unless the entry went stale."""
        if work.revoking or self.parts.get((work.topic, work.partition)) is not work:
            return
        state = work.states.get(chat)
        if not isinstance(state, ChatState) or not state.outbox or chat in work.busy:
            work.ready.discard(chat)
            return
        head = state.outbox[0]
        if head.method != batch.method:  # the head changed (e.g. a superseded rename)
            self._enqueue(work, chat, head.method)
            return
        work.ready.discard(chat)
        batch.calls.append((chat, head))
        batch.routes.append((work.topic, work.partition, work.epoch))
        head.status = IN_FLIGHT
        head.attempts += 1
        work.busy.add(chat)
        work.dirty.add(chat)

    def _apply_completions(self) -> None:
        for done in self.dispatcher.drain():
            self._apply_done(done)

    def _apply_done(self, done: BatchDone) -> None:
        now_ms = self._now_ms()
        for result, (topic, partition, epoch) in zip(done.results, done.batch.routes, strict=True):
            work = self.parts.get((topic, partition))
            if work is None or work.epoch != epoch:
                continue  # revoked meanwhile: the new owner sees the call as in flight
            chat = result.chat_key
            work.busy.discard(chat)
            state = work.state(chat)
            if not state.outbox or state.outbox[0] is not result.call:
                self._make_ready(work, chat, state)
                continue
            before = _pending_of(state)
            call = result.call
            call.attempts = max(call.attempts, result.attempts)
            if result.ambiguous:  # resent after a timeout/reset: the portal may hold two
                self._produce_outcome(
                    chat, outcome_record(chat, call, "ambiguous_resent", code="AMBIGUOUS_RETRY")
                )
            if result.ok:
                outcomes = on_success(state, call, result.result, now_ms)
            else:
                call.first_failure_ms = call.first_failure_ms or now_ms
                outcomes = on_failure(
                    state,
                    call,
                    result.error_class or "permanent",
                    result.code or "UNKNOWN",
                    result.message or "",
                    now_ms,
                    result.http_status,
                )
                if result.error_class == "exhausted":
                    self.metrics.parked_chats.inc()
            self._after_change(work, chat, state, before, outcomes)

    # -- time ----------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _tick(self, gauges: bool = True) -> None:
        now_ms = self._now_ms()
        gap_ms = int(self.settings.engine.gap_timeout_s * 1000)
        for work in list(self.parts.values()):
            if work.rewind_until and time.monotonic() >= work.rewind_until:
                work.rewind_until = 0.0
            for chat, lane in list(work.lanes.items()):
                state = work.state(chat)
                if work.paused:
                    continue  # the missing event may be in the unread backlog
                offer = lane.expire(state, now_ms, gap_ms, work.caught_up_ms)
                if offer.gaps:
                    self._offered(work, chat, state, lane, offer, "timeout")
            for chat in list(work.held_renames):
                state = work.state(chat)
                before = _pending_of(state)
                outcomes = on_tick(state, now_ms, self.fold_config)
                if outcomes:
                    self._after_change(work, chat, state, before, outcomes)
        if time.monotonic() - self._last_sweep >= 30:
            self._last_sweep = time.monotonic()
            self._sweep(now_ms)
        if gauges:
            self._gauges(now_ms)
            self._last_gauges = time.monotonic()

    def _sweep(self, now_ms: int) -> None:
        """Expire idle chats past the TTL; keep the ones idle for a while compact."""
        ttl_ms = int(self.settings.engine.chat_ttl_s * 1000)
        for work in self.parts.values():
            work.sweep(now_ms, ttl_ms)

    def _gauges(self, now_ms: int) -> None:
        held = 0
        chats = 0
        for work in self.parts.values():
            chats += len(work.states)
            held += len(work.held_offsets)
            oldest = None
            for chat in work.busy | work.ready:
                state = work.states.get(chat)
                if isinstance(state, ChatState) and state.outbox:
                    at = state.outbox[0].occurred_at
                    oldest = at if oldest is None else min(oldest, at)
            age = 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000)
            self.metrics.oldest_event_age.labels(
                topic=work.topic, partition=str(work.partition)
            ).set(age)
        self.metrics.chats_in_state.set(chats)
        self.metrics.reorder_held.set(held)
        self.metrics.assigned_partitions.set(len(self.parts))

    # -- backpressure ----------------------------------------------------------------------
    def _backpressure(self) -> None:
        """Pause a partition whose calls pile up, in all or in one chat; resume it once
        they have drained to half (`max_buffered_events` split over the partitions, and
        `max_buffered_per_chat`).

        Only calls waiting for a request (or in one) count: they drain whatever is read.
        Events held for a sequence gap and renames held for their chat's first send wait
        for records further on in the partition, so pausing on them would wait forever;
        the held events are bounded by `_bound_held` instead."""
        assert self._consumer is not None
        if not self.parts:
            return
        limit = max(10, self.settings.engine.max_buffered_events // len(self.parts))
        pause, resume = [], []
        for work in self.parts.values():
            if work.crowded:
                work.crowded = {
                    chat for chat in work.crowded if _outbox_of(work, chat) > self._per_chat // 2
                }
            calls = work.pending - len(work.held_renames)
            if not work.paused and (calls >= limit or work.crowded):
                work.paused = True
                pause.append(TopicPartition(work.topic, work.partition))
            elif work.paused and calls <= limit // 2 and not work.crowded and not work.revoking:
                work.paused = False
                resume.append(TopicPartition(work.topic, work.partition))
        if pause:
            self._consumer.pause(pause)
            self.metrics.partition_pauses.inc(len(pause))
        if resume:
            self._consumer.resume(resume)
        self.metrics.paused_partitions.set(sum(1 for w in self.parts.values() if w.paused))
        self._bound_held()

    def _bound_held(self) -> None:
        """Keep the events held in reorder buffers under `max_buffered_events`: once they
        reach it, give up the gaps open longest until a quarter of the room is free again
        (their late events are dead-lettered when they come, like after a gap timeout)."""
        limit = self.settings.engine.max_buffered_events
        held = sum(len(work.held_offsets) for work in self.parts.values())
        if held < limit:
            return
        logger.warning(
            "%d events wait in reorder buffers (max_buffered_events %d): giving up the "
            "gaps open longest",
            held,
            limit,
        )
        lanes = sorted(
            (
                (lane.buffer.since_ms, chat, work)
                for work in self.parts.values()
                if not work.revoking
                for chat, lane in work.lanes.items()
            ),
            key=_opened,
        )
        now_ms = self._now_ms()
        for _, chat, work in lanes:
            if held <= limit * 3 // 4:
                break
            lane = work.lanes.get(chat)
            if lane is None:
                continue
            before = len(work.held_offsets)
            state = work.state(chat)
            offer = lane.expire(state, now_ms, 0, now_ms)
            self._offered(work, chat, state, lane, offer, "buffers_full")
            held -= before - len(work.held_offsets)

    # -- commit --------------------------------------------------------------------------
    def _commit(self) -> bool:
        """Commit everything so far and wait for it (drain, revoke).

        Returns False when the transaction was aborted (its writes are queued again)."""
        self._settle()
        self._start_commit([])
        return self._settle()

    def _start_commit(self, batches: list[Batch]) -> None:
        """Close the open transaction: changed states, outputs so far and the committable
        offsets go to librdkafka, and the committer thread commits them. `batches` leave
        once it is committed (`_settle`); the loop goes on meanwhile, into the next one."""
        assert self._consumer is not None and self._producer is not None
        assert self._committing is None
        offsets: list[TopicPartition] = []
        for work in self.parts.values():
            if work.sparse:
                self._rehome(work)
            target = work.committable()
            if target > work.committed and target >= 0:
                offsets.append(TopicPartition(work.topic, work.partition, target))
        dirty = any(work.dirty or work.orphans for work in self.parts.values())
        if not (offsets or dirty or self._outputs_since_commit or batches):
            self._last_commit = time.monotonic()
            return
        started = time.monotonic()
        chats: list[tuple[PartitionWork, str]] = []
        for work in self.parts.values():
            if not (work.dirty or work.orphans):
                continue
            changelog = self.settings.changelog_topic(work.topic)
            fresh: list[tuple[str, PendingCall]] = []
            for chat in work.dirty:
                state = work.states.get(chat)
                if state is None:
                    value = None  # tombstone: the chat expired
                    self._write_bodies(work, changelog, chat, [], fresh)
                elif isinstance(state, bytes):
                    value = state
                else:
                    self._write_bodies(work, changelog, chat, state.calls(), fresh)
                    value = state.to_bytes()  # kept as it is: see COMPACT_AFTER_MS
                self._produce(
                    changelog, chat.encode(), value, None, partition=work.partition, replay=False
                )
                chats.append((work, chat))
            self._write_blocks(work, changelog, fresh)
            for key in work.orphans:
                self._produce(changelog, key, None, None, partition=work.partition, replay=False)
            work.dirty.clear()
            work.tombstones.clear()
            work.orphans.clear()
        outputs, self._txn_outputs = self._txn_outputs, []
        self._outputs_since_commit = 0
        done: Future[float]
        try:
            self._send_unsent()
        except KafkaException as exc:  # settled like a failed commit: aborted, made again
            self._unsent.clear()
            self._unsent_headed.clear()
            done = Future()
            done.set_exception(exc)
        else:
            group = self._consumer.consumer_group_metadata() if offsets else None
            done = self._committer.submit(self._commit_transaction, offsets, group)
        self._committing = Committing(offsets, outputs, chats, batches, started, done)

    def _commit_transaction(self, offsets: list[TopicPartition], group: object) -> float:
        """On the committer thread: the offsets join the transaction, which is committed.
        Returns when it was done.

        The records are flushed first (the commit would flush them anyway): aborting a
        transaction whose partitions are still being registered with the coordinator
        fails for good with INVALID_TXN_STATE (librdkafka#4849), so the offsets, whose
        failure is the usual abortable one (a rebalance), join once every record is
        acknowledged."""
        assert self._producer is not None
        self._producer.flush(60)
        if offsets:
            self._producer.send_offsets_to_transaction(offsets, group, 30)
        self._producer.commit_transaction(60)
        return time.monotonic()

    def _settle(self, wait: bool = True, submit: bool = True) -> bool:
        """Finish the transaction being committed, if any (or, without `wait`, only if it
        is done): its requests leave and the next transaction begins; if it was aborted,
        its writes are queued again and its requests go back to their queues.

        Returns False when it was aborted."""
        pending = self._committing
        if pending is None:
            return True
        if not wait and not pending.done.done():
            return True
        assert self._consumer is not None and self._producer is not None
        self._committing = None
        try:
            finished = pending.done.result()
        except KafkaException as exc:
            self.metrics.transactions.labels(result="aborted").inc()
            error = exc.args[0]
            if not error.txn_requires_abort() and not error.retriable():
                # Fenced or fatal: state in memory is ahead of Kafka; the only safe way on
                # is a restart that restores from the changelog (what a pod restart does).
                logger.critical(
                    "Kafka transaction failed (%s); exiting so state is restored "
                    "from the changelog",
                    error,
                )
                raise
            # E.g. ILLEGAL_GENERATION while the group rebalances: abort, then write the
            # same outputs and states again in the next transaction.
            logger.warning("Kafka transaction aborted (%s); retrying its writes", error)
            self._replay_aborted(pending)
            self._unplan(pending.batches)  # the marks are not durable: nothing may leave
            return False
        self._producer.begin_transaction()
        for tp in pending.offsets:
            owner = self.parts.get((tp.topic, tp.partition))
            if owner is not None:
                owner.committed = max(owner.committed, tp.offset)
        if pending.offsets:
            # Offsets go to Kafka inside the transaction; storing them as well lets
            # librdkafka's statistics report consumer lag (consumer_lag_stored).
            with contextlib.suppress(KafkaException):
                self._consumer.store_offsets(offsets=pending.offsets)
        self._last_commit = finished
        self.metrics.transactions.labels(result="committed").inc()
        self.metrics.transaction_duration.observe(finished - pending.started)
        if submit:
            for batch in pending.batches:
                self.dispatcher.submit(batch)
        else:
            self._unplan(pending.batches)
        return True

    def _write_bodies(
        self,
        work: PartitionWork,
        changelog: str,
        chat: str,
        calls: list[PendingCall],
        fresh: list[tuple[str, PendingCall]],
    ) -> None:
        """Queue the bodies of the chat's new calls for this commit's blocks; let go of
        the bodies of its finished ones."""
        written = work.stored.get(chat)
        if written is None:
            if calls:
                fresh.extend((chat, call) for call in calls)
                work.stored[chat] = {call.origin[2] for call in calls}
            return
        if not calls:
            for offset in written:
                self._release(work, changelog, chat, offset)
            del work.stored[chat]
            return
        if len(calls) == len(written) == 1 and calls[0].origin[2] in written:
            return  # the same waiting call (its mark changed): the most common case
        now = {call.origin[2] for call in calls}
        for call in calls:
            if call.origin[2] not in written:
                fresh.append((chat, call))
        for offset in written - now:
            self._release(work, changelog, chat, offset)
        work.stored[chat] = now

    def _write_blocks(
        self, work: PartitionWork, changelog: str, fresh: list[tuple[str, PendingCall]]
    ) -> None:
        """The new bodies of one partition's commit, in as few block records as fit."""
        start = 0
        while start < len(fresh):
            end, size = start, 0
            while end < len(fresh) and (end == start or size < BLOCK_BYTES):
                size += len(fresh[end][1].body())
                end += 1
            items = fresh[start:end]
            key = block_key(self._writer, self._blocks)
            self._blocks += 1
            self._produce(
                changelog, key, encode_block(items), None, partition=work.partition, replay=False
            )
            for chat, call in items:
                work.block_of[(chat, call.offset)] = key
            work.blocks[key] = Block(len(items), len(items), time.monotonic())
            start = end

    def _release(self, work: PartitionWork, changelog: str, chat: str, offset: int) -> None:
        """A call's body is no longer needed: delete its record, or its block once the
        block holds no live call."""
        key = work.block_of.pop((chat, offset), None)
        if key is None:
            key = body_key(chat, offset)  # a body record of its own (before blocks)
        else:
            block = work.blocks.get(key)
            if block is not None and block.live > 1:
                block.live -= 1
                if 4 * block.live <= block.size and time.monotonic() - block.born >= REHOME_AFTER_S:
                    work.sparse.add(key)
                return
            work.blocks.pop(key, None)
            work.sparse.discard(key)
        self._produce(changelog, key, None, None, partition=work.partition, replay=False)

    @staticmethod
    def _rehome(work: PartitionWork) -> None:
        """Sparse blocks: their live calls' bodies go into this commit's blocks, and the
        old blocks are deleted in the same transaction (as orphans, after the new ones)."""
        for (chat, offset), key in list(work.block_of.items()):
            if key in work.sparse:
                del work.block_of[(chat, offset)]
                work.stored.get(chat, set()).discard(offset)
                work.dirty.add(chat)
        for key in work.sparse:
            work.blocks.pop(key, None)
        work.orphans.update(work.sparse)
        work.sparse.clear()

    def _replay_aborted(self, aborted: Committing) -> None:
        """Abort the transaction; its outputs go into the next one ahead of everything
        made since, and its chats' states are written again."""
        assert self._producer is not None
        self._producer.abort_transaction(30)
        self._producer.begin_transaction()
        newer, newer_headed, newer_outputs = self._unsent, self._unsent_headed, self._txn_outputs
        self._unsent, self._unsent_headed, self._txn_outputs = {}, [], []
        for topic, key, value, headers, partition in aborted.outputs:
            self._produce(topic, key, value, headers, partition)
        for lane, records in newer.items():
            self._unsent.setdefault(lane, []).extend(records)
        self._unsent_headed.extend(newer_headed)
        self._txn_outputs.extend(newer_outputs)
        for work, chat in aborted.chats:
            if self.parts.get((work.topic, work.partition)) is work:
                work.dirty.add(chat)
                # Its new bodies were in the aborted transaction: write all its waiting
                # calls' bodies again, into this transaction's blocks (bodies it finished
                # meanwhile stay as orphans until the next restore drops them).
                changelog = self.settings.changelog_topic(work.topic)
                for offset in work.stored.pop(chat, set()):
                    self._release(work, changelog, chat, offset)

    # -- rebalance -----------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(type="assign").inc()
        self._restoring += len(partitions)
        self.metrics.restoring_partitions.set(self._restoring)
        reader = restore_reader(self.settings)
        try:
            for tp in partitions:
                self._epoch += 1
                work = PartitionWork(tp.topic, tp.partition, self._epoch)
                self._restore(reader, work)
                self.parts[(tp.topic, tp.partition)] = work
                self._restoring -= 1
                self.metrics.restoring_partitions.set(self._restoring)
        finally:
            reader.close()
        self.assigned = bool(self.parts)  # a replica with nothing to do is not ready
        self.metrics.assigned_partitions.set(len(self.parts))

    def _restore(self, reader: Consumer, work: PartitionWork) -> None:
        started = time.monotonic()
        changelog = self.settings.changelog_topic(work.topic)
        states = work.states
        count = 0
        value: bytes | None
        bodies = work.bodies
        blocks: dict[bytes, list[tuple[str, int]]] = {}
        for key, value in read_partition_to_end(reader, changelog, work.partition, timeout=300):
            count += 1
            if is_block_key(key):
                self._restore_block(work, blocks, key, value)
                continue
            body = parse_body_key(key)
            if body is not None:  # a body record of its own (written before blocks)
                owner, offset = body
                if value is None:
                    if (owner, offset) not in work.block_of:  # not re-homed to a block
                        bodies.get(owner, {}).pop(offset, None)
                else:
                    bodies.setdefault(owner, {})[offset] = value
                continue
            chat = key.decode()
            if value is None:
                states.pop(chat, None)
            else:
                states[chat] = value
        self.metrics.restore_records.inc(count)
        policy = self.settings.engine.unknown_outcome_policy
        for chat, stored in list(states.items()):
            if not isinstance(stored, bytes) or (b'"o"' not in stored and b'"h"' not in stored):
                continue
            state = work.state(chat)
            before = 0
            outcomes = on_restore(state, policy)
            for outcome in outcomes:
                self._emit(chat, outcome)
            if outcomes:
                work.dirty.add(chat)
            work.pending += _pending_of(state) - before
            if state.held_rename is not None:
                work.held_renames.add(chat)
            self._make_ready(work, chat, state)
        for owner, left in bodies.items():  # no chat refers to them: finished calls
            for offset in left:
                work.unreferenced(owner, offset)
        bodies.clear()
        restored_at = time.monotonic()
        for key, items in blocks.items():
            work.blocks[key] = Block(0, len(items), restored_at)
        for key in work.block_of.values():
            work.blocks[key].live += 1
        for key in [key for key, block in work.blocks.items() if not block.live]:
            del work.blocks[key]
            work.orphans.add(key)
        logger.info(
            "restored %d chat states of %s[%d] from %d records in %.2fs",
            len(states),
            work.topic,
            work.partition,
            count,
            time.monotonic() - started,
        )

    @staticmethod
    def _restore_block(
        work: PartitionWork,
        blocks: dict[bytes, list[tuple[str, int]]],
        key: bytes,
        value: bytes | None,
    ) -> None:
        """A block of call bodies read at restore (None: its tombstone)."""
        if value is None:
            for chat, offset in blocks.pop(key, ()):
                if work.block_of.get((chat, offset)) == key:  # not re-homed to a later one
                    del work.block_of[(chat, offset)]
                    work.bodies.get(chat, {}).pop(offset, None)
            return
        items = decode_block(value)
        blocks[key] = [(chat, offset) for chat, offset, _ in items]
        for chat, offset, body in items:
            work.bodies.setdefault(chat, {})[offset] = body
            work.block_of[(chat, offset)] = key

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(type="revoke").inc()
        works = [
            self.parts[(tp.topic, tp.partition)]
            for tp in partitions
            if (tp.topic, tp.partition) in self.parts
        ]
        for work in works:
            work.revoking = True
        self._settle()  # its requests leave, and are waited for like the others
        deadline = time.monotonic() + min(self.settings.shutdown_grace_s, 15.0)
        while (
            any(work.busy for work in works)
            and time.monotonic() < deadline
            and not self.dispatcher.lost
        ):
            self.dispatcher.wait(0.05)
            self._apply_completions()
        for _ in range(3):  # the revoked partitions' states must reach the changelog
            if self._commit():
                break
        for work in works:
            del self.parts[(work.topic, work.partition)]
        revoked = {id(work) for work in works}
        for group, waiting in self._ready_queues.items():  # drop the revoked chats' entries
            self._ready_queues[group] = deque(e for e in waiting if id(e[0]) not in revoked)
        self.metrics.assigned_partitions.set(len(self.parts))
        self.assigned = bool(self.parts)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(type="lost").inc()
        raise KafkaException(
            KafkaError(
                KafkaError._FATAL,
                "partitions lost (session timeout); restarting to restore state from the changelog",
            )
        )


def _call_for(work: PartitionWork, state: ChatState, held: Held) -> PendingCall:
    """The outbox entry for a consumed event, remembering where it came from."""
    origin = (work.topic, work.partition, held.offset)
    return new_call(held.event, state, origin, held.raw, held.raw_key, held.headers)


def _event_of(held: Held) -> ChatEvent:
    return held.event


def _redrive_count(headers: tuple[tuple[str, bytes], ...]) -> int:
    for key, value in headers:
        if key == REDRIVE_HEADER:
            try:
                return int(value)
            except ValueError:
                return 1
    return 0


def outcome_record_raw(
    event_id: str, chat: str, seq: int | None, kind: str, outcome: str, origin: tuple[str, int, int]
) -> bytes:
    """An outcome line for an event that never became a call (duplicate, ...)."""
    call = PendingCall(event_id, seq, kind, "", {}, 0, origin)
    return outcome_record(chat, call, outcome)


def outcome_gap(chat: str, missing: str) -> bytes:
    """An outcome line recording a sequence gap the chat moved past."""
    call = PendingCall("", None, "gap", "", {}, 0, ("", -1, -1))
    return outcome_record(chat, call, "gap", missing=missing)
