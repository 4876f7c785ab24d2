"""The engine: consume -> decode -> validate -> order/dedup -> fold -> dispatch -> commit
(architecture §3). It orchestrates; each step's rules live in a part of their own:

* `consumer.core` decides (admission in `ordering`, calls in `fold`);
* `consumer.store.changelog` keeps each partition's chats and their changelog records;
* `consumer.engine.planner` forms requests; `consumer.engine.backpressure` decides and
  `consumer.engine.fetching` applies pauses;
* `consumer.engine.restorer` restores assigned partitions from the poll loop;
* `consumer.engine.outputs` writes outcomes and dead letters;
* `consumer.kafka.writer` commits all of it in Kafka transactions.

One poll thread owns all Kafka state; Bitrix24 calls run on the dispatcher's loop. A chat's
calls wait in its state's outbox, so an event is durable once its decision is committed; a
call is marked in flight in a committed transaction *before* its request leaves (the send
ledger), so after a crash an in-flight call is known to have an unknown outcome.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.codec import ChatEventDecoder, SchemaRegistryClient
from consumer.core.validation import invalid_field
from consumer.dispatch.batch import Batch, DispatchPort
from consumer.engine.chats import ChatFlow
from consumer.engine.fetching import Fetching
from consumer.engine.outputs import Outputs
from consumer.engine.partition import REGISTRY, RESTORING, Held, Partition
from consumer.engine.requests import Requests
from consumer.engine.restorer import Restorer
from consumer.errors import PartitionsLost, PoisonRecord, RegistryUnavailable, TransactionStuck
from consumer.kafka.clients import consumer_config, producer_config
from consumer.kafka.records import REDRIVE_HEADER, record_headers, record_position
from consumer.kafka.topics import Topics
from consumer.kafka.writer import Settled, TransactionalWriter
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from consumer.store.changelog import PartitionStore

logger = logging.getLogger(__name__)

REGISTRY_RETRY_S = (0.5, 30.0)  # first and longest wait before a record is read again
# A commit running this many times transaction.timeout.ms is stuck: give up on it.
STUCK_COMMIT_TIMEOUTS = 2


@dataclass(slots=True)
class Round:
    """What a commit carries for the engine: the chats whose records it holds, and the
    requests whose in-flight marks it makes durable (they leave once it is committed)."""

    chats: list[tuple[Partition, list[str]]]
    batches: list[Batch]


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
        self._producer_factory = producer_factory  # a test passes one that watches
        self._create_sources = create_sources
        self._registry = SchemaRegistryClient.from_settings(settings)
        self.decoder = ChatEventDecoder(self._registry)
        self.parts: dict[tuple[str, int], Partition] = {}
        self.requests = Requests(settings.engine, dispatcher, self.parts)
        self.fetching = Fetching(self.parts, settings.engine, metrics, self._give_up_gap)
        self.writer: TransactionalWriter[Round] | None = None
        self.outputs: Outputs | None = None
        self.chats: ChatFlow | None = None
        self._restorer = Restorer(settings)
        self._consumer: Consumer | None = None
        self._epoch = 0
        self._stop = threading.Event()
        self._joined = False
        self._last_commit = 0.0
        self._last_tick = 0.0
        self._last_gauges = 0.0
        self._last_sweep = 0.0
        self._writer_id = uuid.uuid4().hex[:12]  # names this run's blocks of call bodies
        self._record_limit = 1_000_000
        self._source_partitions = 1
        self._stuck = False
        self._stuck_after_s = 60.0  # set from transaction.timeout.ms in run()
        self._lost = False  # the group took the partitions away: commit nothing more
        self.started = threading.Event()

    # -- life cycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to drain and exit (SIGTERM)."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """Joined the group, restored what it owns, and not draining (a replica that owns no
        partition is ready: with more replicas than partitions a rollout must go on)."""
        return (
            self._joined
            and not any(part.restoring for part in self.parts.values())
            and not self._stop.is_set()
        )

    def run(self) -> None:
        """Provision topics, join the group and process until stopped."""
        settings = self.settings
        self.metrics.poll_heartbeat.set(self.clock())  # starting counts as alive
        topics = Topics(settings)
        topics.wait_for_cluster()
        self._source_partitions = sum(topics.ensure(create_sources=self._create_sources).values())
        producer_conf = producer_config(settings, stats_cb=self.metrics.kafka.update)
        timeout_ms = int(producer_conf.get("transaction.timeout.ms", 60_000))
        self._stuck_after_s = STUCK_COMMIT_TIMEOUTS * timeout_ms / 1000
        limits = topics.record_limits(int(producer_conf.get("message.max.bytes", 1_000_000)))
        self._record_limit = limits.get(settings.changelog_topic(settings.source_topics[0]), 0)
        self.dispatcher.start()
        try:
            writer: TransactionalWriter[Round] = TransactionalWriter(
                self._producer_factory(producer_conf),
                queue_room=int(producer_conf.get("queue.buffering.max.messages", 100_000)),
            )
            self.writer = writer
            self.outputs = Outputs(settings, self.metrics, writer, self.clock, limits)
            self.chats = ChatFlow(
                settings.engine, self.metrics, self.outputs, self.requests, self._now_ms
            )
            writer.start()
            self._consumer = Consumer(consumer_config(settings, stats_cb=self.metrics.kafka.update))
            self.fetching.consumer = self._consumer
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
        if self._stuck:  # every Kafka call would wait for the stuck commit: leave now
            self.dispatcher.stop()
            self.metrics.ready.set(0)
            return
        consumer, writer = self._consumer, self.writer
        if writer is not None:
            try:  # the producer must be idle before anything else touches it
                if self._lost:  # a commit under way ends; the open transaction is aborted
                    writer.settle()
                else:
                    self._settle()
            except KafkaException as exc:
                logger.warning("the last transaction failed: %s", exc)
        if consumer is not None:
            try:
                consumer.close()  # revokes (drain + commit via _on_revoke) and leaves the group
            except KafkaException as exc:
                logger.warning("closing the consumer failed: %s", exc)
        if writer is not None:
            writer.close()
        self._restorer.close()
        self.dispatcher.stop()
        if self._registry is not None:
            self._registry.close()
        if self.outputs is not None:
            self.outputs.publish_counts()
        self.metrics.ready.set(0)

    def _drain(self, grace: float) -> None:
        """Stop fetching; let in-flight calls finish within `grace`; commit."""
        assert self._consumer is not None
        assigned = [TopicPartition(p.topic, p.partition) for p in self.parts.values()]
        if assigned:
            self._consumer.pause(assigned)
        self._settle()  # its requests leave, and are waited for like the others
        deadline = time.monotonic() + grace
        while self.dispatcher.in_flight and time.monotonic() < deadline:
            self.dispatcher.wait(0.05)
            self._apply_completions()
        self._commit()

    # -- the loop --------------------------------------------------------------------------
    def _iteration(self) -> None:
        assert self._consumer is not None and self.writer is not None
        assert self.outputs is not None
        now = time.monotonic()
        self.metrics.poll_heartbeat.set(self.clock())
        if len(self._restorer):
            for target in self._restorer.step(0.05):
                self._restored(target)
        # consume() waits out its whole timeout unless the batch fills up, so take what is
        # there, and wait (only until the first record) when nothing is.
        messages = self._consumer.consume(num_messages=2000, timeout=0)
        if not messages:
            if self.writer.committing or len(self._restorer):
                timeout = 0.002
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
        # so after a crash every call that may have reached the portal is known. The commit
        # runs on the committer thread while this loop reads and folds on; its requests
        # leave when it is done, and the next round is planned then.
        if self.writer.committing:
            self._settle(wait=False)
            stuck = self.writer.commit_age()
            if stuck > self._stuck_after_s:
                self._stuck = True
                raise TransactionStuck(
                    f"a Kafka transaction has been committing for {stuck:.0f}s, long past "
                    "transaction.timeout.ms; exiting so that the next instance fences it and "
                    "restores from the changelog"
                )
        if not self.writer.committing:
            batches = self.requests.plan()
            interval = self.settings.engine.commit_interval_ms / 1000
            if batches or now - self._last_commit >= interval:
                self._start_commit(batches)
        self.fetching.balance()
        self.outputs.publish_counts()
        self.metrics.ready.set(1 if self.ready else 0)

    def _apply_completions(self) -> None:
        """Results of finished requests, to their chats (unless the partition was revoked
        meanwhile: the next owner sees the call as in flight)."""
        assert self.chats is not None
        for done in self.dispatcher.drain():
            calls = [call for _, call in done.batch.calls]
            routes = {id(c): route for c, route in zip(calls, done.batch.routes, strict=True)}
            for result in done.results:
                topic, partition, epoch = routes[id(result.call)]
                part = self.parts.get((topic, partition))
                if part is not None and part.epoch == epoch:
                    self.chats.result(part, result)

    def _give_up_gap(self, part: Partition, chat: str) -> int:
        assert self.chats is not None
        return self.chats.give_up_gap(part, chat)

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        logger.warning("Kafka: %s", error.str())

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- records ---------------------------------------------------------------------------
    def _on_record(self, msg: Message) -> None:
        topic, partition, offset = record_position(msg)
        part = self.parts.get((topic, partition))
        if part is None:
            return
        if RESTORING in part.pauses:  # fetched before the pause took: read it again later
            part.rewind = offset if part.rewind < 0 else min(part.rewind, offset)
            return
        if REGISTRY in part.pauses:
            return  # read again once the partition fetches (it was sought back to it)
        assert self.outputs is not None
        value = msg.value() or b""
        raw_key = msg.key() or b""
        headers = record_headers(msg)
        try:
            event = self.decoder.decode(value)
        except RegistryUnavailable as exc:
            self._wait_for_registry(part, offset, exc)
            return
        except PoisonRecord as exc:
            part.next_offset = offset + 1
            self.outputs.consumed(topic)
            chat = raw_key.decode(errors="replace")
            origin = (topic, partition, offset)
            self.outputs.dead_letter(
                chat, origin, value, raw_key, headers, "poison", exc.code, str(exc)
            )
            return
        part.next_offset = offset + 1
        part.registry_delay = 0.0
        self.outputs.consumed(topic)
        problem = invalid_field(event, self.settings.portals)
        if problem is not None:
            origin = (topic, partition, offset)
            self.outputs.dead_letter(
                raw_key.decode(errors="replace"),
                origin,
                value,
                raw_key,
                headers,
                "invalid_event",
                "INVALID_EVENT",
                problem,
                event.event_id,
                event.kind,
            )
            return
        redrive = any(k == REDRIVE_HEADER for k, _ in headers)
        assert self.chats is not None
        self.chats.admit(part, event, Held(event, offset, value, raw_key, headers, redrive))

    def _wait_for_registry(self, part: Partition, offset: int, exc: RegistryUnavailable) -> None:
        """The registry did not answer: not the record's fault. The partition stops
        fetching, goes back to the record, and reads it again after a backoff (doubling
        up to 30 s, with jitter); nothing past it is read or committed meanwhile."""
        assert self._consumer is not None
        first, longest = REGISTRY_RETRY_S
        part.registry_delay = min(longest, max(first, part.registry_delay * 2))
        wait = part.registry_delay * random.uniform(0.8, 1.2)
        part.registry_retry_at = time.monotonic() + wait
        logger.warning(
            "%s; %s[%d] reads offset %d again in %.1fs",
            exc,
            part.topic,
            part.partition,
            offset,
            wait,
        )
        self.metrics.registry_waits.inc()
        self.fetching.pause(part, REGISTRY)
        self._consumer.seek(TopicPartition(part.topic, part.partition, offset))

    # -- time ------------------------------------------------------------------------------
    def _tick(self, gauges: bool = True) -> None:
        assert self._consumer is not None
        now_ms = self._now_ms()
        assert self.chats is not None
        now = time.monotonic()
        self._joined = bool(self._consumer.memberid())
        for part in list(self.parts.values()):
            if REGISTRY in part.pauses and now >= part.registry_retry_at:
                self.fetching.resume(part, REGISTRY)
            if not part.pauses:  # else the missing event may be in the unread backlog
                self.chats.tick(part, now_ms)
        if now - self._last_sweep >= 30:
            self._last_sweep = now
            ttl_ms = int(self.settings.engine.chat_ttl_s * 1000)
            for part in self.parts.values():
                if not part.restoring:
                    part.store.sweep(now_ms, ttl_ms, part.in_use)
        if gauges:
            self._gauges(now_ms)
            self._last_gauges = now

    def _gauges(self, now_ms: int) -> None:
        held = chats = 0
        for part in self.parts.values():
            chats += len(part.store)
            held += len(part.held_offsets)
            oldest = None
            for chat in part.busy | part.ready:
                state = part.store.peek(chat)
                if state is not None and state.outbox:
                    at = state.outbox[0].occurred_at
                    oldest = at if oldest is None else min(oldest, at)
            age = 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000)
            self.metrics.oldest_event_age.labels(
                topic=part.topic, partition=str(part.partition)
            ).set(age)
        self.metrics.chats_in_state.set(chats)
        self.metrics.reorder_held.set(held)
        self.metrics.assigned_partitions.set(len(self.parts))

    # -- commit ----------------------------------------------------------------------------
    def _commit(self) -> bool:
        """Commit everything so far and wait for it (drain, revoke). False when aborted
        (its writes are queued again)."""
        self._settle()
        self._start_commit([])
        return self._settle()

    def _start_commit(self, batches: list[Batch]) -> None:
        """Close the open transaction: changed states, outputs so far and the committable
        offsets; the committer thread commits them while the loop goes on."""
        assert self._consumer is not None and self.writer is not None
        offsets: list[TopicPartition] = []
        for part in self.parts.values():
            target = part.committable()
            if target > part.committed and target >= 0:
                offsets.append(TopicPartition(part.topic, part.partition, target))
        changed = [p for p in self.parts.values() if p.store.has_changes]
        if not (offsets or changed or self.writer.pending or batches):
            self._last_commit = time.monotonic()
            return
        chats: list[tuple[Partition, list[str]]] = []
        for part in changed:
            changelog = self.settings.changelog_topic(part.topic)
            records, carried = part.store.changes()
            for key, value in records:
                self.writer.produce(changelog, key, value, partition=part.partition, replay=False)
            chats.append((part, carried))
        group = self._consumer.consumer_group_metadata() if offsets else None
        self.writer.commit(offsets, group, Round(chats, batches))

    def _settle(self, wait: bool = True, submit: bool = True) -> bool:
        """Finish the commit under way, if any (without `wait`: only if it is done): its
        requests leave; if it was aborted, its chats are written again and its requests go
        back to their queues. False when it was aborted."""
        assert self.writer is not None
        try:
            settled: Settled[Round] | None = self.writer.settle(wait)
        except KafkaException:  # fenced or fatal: the process exits and restores
            self.metrics.transactions.labels(result="aborted").inc()
            raise
        if settled is None:
            return True
        round_ = settled.payload
        if not settled.committed:
            self.metrics.transactions.labels(result="aborted").inc()
            for part, carried in round_.chats:
                if self.parts.get(part.key) is part:
                    part.store.rewrite(carried)
            self.requests.unplan(round_.batches)  # the marks are not durable: nothing may leave
            return False
        assert self._consumer is not None
        for tp in settled.offsets:
            owner = self.parts.get((tp.topic, tp.partition))
            if owner is not None:
                owner.committed = max(owner.committed, tp.offset)
        if settled.offsets:
            # Offsets go to Kafka inside the transaction; storing them as well lets
            # librdkafka's statistics report consumer lag (consumer_lag_stored).
            with contextlib.suppress(KafkaException):  # a partition revoked meanwhile
                self._consumer.store_offsets(offsets=settled.offsets)
        self._last_commit = time.monotonic()
        self.metrics.transactions.labels(result="committed").inc()
        self.metrics.transaction_duration.observe(settled.seconds)
        if submit:
            for batch in round_.batches:
                self.dispatcher.submit(batch)
        else:
            self.requests.unplan(round_.batches)
        return True

    # -- rebalance -------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """New partitions fetch nothing until their chats are restored (by the loop)."""
        self.metrics.rebalances.labels(type="assign").inc()
        self._joined = True
        try:
            consumer.incremental_assign(partitions)
        except KafkaException:
            consumer.assign(partitions)  # an eager assignor configured by hand
        for tp in partitions:
            self._epoch += 1
            store = PartitionStore(f"{self._writer_id}.{tp.partition}", self._record_limit)
            part = Partition(tp.topic, tp.partition, self._epoch, store)
            self.parts[part.key] = part
            self.fetching.pause(part, RESTORING)
            changelog = self.settings.changelog_topic(tp.topic)
            if self._restorer.add(changelog, tp.partition, store):
                self._restored((changelog, tp.partition))
        self.metrics.restoring_partitions.set(len(self._restorer))
        self.metrics.assigned_partitions.set(len(self.parts))
        self._share_limits()

    def _share_limits(self) -> None:
        """This replica takes the part of each portal's limits that its part of the source
        partitions is (replicas come and go: KEDA scales them)."""
        total = max(1, self._source_partitions)
        self.dispatcher.set_share(max(1, len(self.parts)) / total)

    def _restored(self, target: tuple[str, int]) -> None:
        """A partition's changelog was read to its end: its waiting calls go on."""
        assert self.outputs is not None
        part = next(
            (p for p in self.parts.values() if p.restoring and self._changelog_of(p) == target),
            None,
        )
        self.metrics.restoring_partitions.set(len(self._restorer))
        if part is None:
            return
        restored = part.store.finish_load()
        self.metrics.restore_records.inc(restored.records)
        for chat, offset in restored.missing:
            self.outputs.dead_letter(
                chat,
                (part.topic, part.partition, offset),
                b"",
                chat.encode(),
                (),
                "lost",
                "MISSING_CALL_BODY",
                "the changelog had this waiting call but not its body; the event is at this "
                "source offset: produce it again from there if it still exists",
            )
        assert self.chats is not None
        self.chats.restored(part, restored.waiting, self.settings.engine.unknown_outcome_policy)
        logger.info(
            "restored %d chat states of %s[%d] from %d records",
            len(part.store),
            part.topic,
            part.partition,
            restored.records,
        )
        if part.rewind >= 0:
            assert self._consumer is not None
            self._consumer.seek(TopicPartition(part.topic, part.partition, part.rewind))
            part.rewind = -1
        self.fetching.resume(part, RESTORING)

    def _changelog_of(self, part: Partition) -> tuple[str, int]:
        return self.settings.changelog_topic(part.topic), part.partition

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(type="revoke").inc()
        if self._lost:
            return
        keys = [(tp.topic, tp.partition) for tp in partitions]
        parts = [self.parts[key] for key in keys if key in self.parts]
        for part in parts:
            part.revoking = True
            if part.restoring:
                self._restorer.remove(*self._changelog_of(part))
        # Requests not sent yet never leave from here: the next owner sends them.
        self.dispatcher.revoke({part.epoch for part in parts})
        self._settle()  # its requests leave (unless revoked), and are waited for
        deadline = time.monotonic() + min(self.settings.shutdown_grace_s, 15.0)
        while any(part.busy for part in parts) and time.monotonic() < deadline:
            self.dispatcher.wait(0.05)
            self._apply_completions()
        for _ in range(3):  # the revoked partitions' states must reach the changelog
            if self._commit():
                break
        for part in parts:
            del self.parts[part.key]
            self.metrics.forget_partition(part.topic, part.partition)
        self.requests.forget(parts)
        self.metrics.assigned_partitions.set(len(self.parts))
        self._share_limits()
        self.metrics.restoring_partitions.set(len(self._restorer))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The partitions are someone else's already: nothing of theirs is sent or
        committed from here (`PartitionsLost` ends the run; the service runs a new engine)."""
        self.metrics.rebalances.labels(type="lost").inc()
        self._lost = True
        self.dispatcher.revoke({part.epoch for part in self.parts.values()})
        for part in self.parts.values():
            self.metrics.forget_partition(part.topic, part.partition)
        self.parts.clear()
        self.metrics.assigned_partitions.set(0)
        self._joined = False
        raise PartitionsLost(
            f"the group took {len(partitions)} partitions from this member without a revoke "
            "(its session expired: was the process paused, or a broker away?); rejoining and "
            "restoring their state from the changelog"
        )
