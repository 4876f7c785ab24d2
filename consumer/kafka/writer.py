"""The transactional writer: every record the engine makes goes out in Kafka transactions,
one being committed on a thread of its own while the loop fills the next.

`produce` keeps a record for the open transaction; `commit` hands the records to librdkafka
and commits them with the consumed offsets on the committer thread; `settle` collects the
result. Errors follow librdkafka's transactional contract:

* retriable (`error.retriable()`, e.g. a coordinator moving while a broker restarts): the
  same call is made again, as long as it takes (a transaction left open past
  `transaction.timeout.ms` is aborted by the coordinator, which ends it as abortable);
* abortable (`txn_requires_abort()`, e.g. ILLEGAL_GENERATION in a rebalance): the
  transaction is aborted, its replayable records go into the next one ahead of everything
  made since, and `settle` reports it so the caller redoes its own part;
* anything else (fenced, fatal): raised; the process must restart and restore.

The records are flushed before the offsets join the transaction: aborting a transaction
whose partitions are still being registered with the coordinator fails for good with
INVALID_TXN_STATE (librdkafka#4849), and the offsets are where the usual abortable error
comes from.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
Output = tuple[str, bytes, bytes | None, Headers | None, int | None]
P = TypeVar("P")
PRODUCE_CHUNK = 10_000  # records per produce_batch call


@dataclass(slots=True)
class Settled(Generic[P]):
    """A finished commit: whether it was committed (else aborted and its replayable records
    queued again), the offsets it carried, the caller's payload, and how long it took."""

    committed: bool
    offsets: list[TopicPartition]
    payload: P
    seconds: float
    error: KafkaError | None = None


@dataclass(slots=True)
class _Committing(Generic[P]):
    offsets: list[TopicPartition]
    outputs: list[Output]
    payload: P
    started: float
    done: Future[float]


class TransactionalWriter(Generic[P]):
    """Records for one transactional producer, committed off the caller's thread."""

    def __init__(
        self,
        producer: Producer,
        *,
        queue_room: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._room = queue_room
        self._chunk = max(1, min(PRODUCE_CHUNK, queue_room // 2))
        self._clock = clock
        self._replay: list[Output] = []  # kept until committed, made again if aborted
        # Not yet handed to librdkafka: by topic/partition (None: the key decides) in the
        # order made, and those with headers (produce_batch takes none).
        self._unsent: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        self._unsent_headed: list[tuple[str, dict[str, Any]]] = []
        self._made = 0
        self._committing: _Committing[P] | None = None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="kafka-commit")

    def start(self) -> None:
        """Register the transactional id (fencing a previous instance) and begin."""
        self._retrying(lambda left: self._producer.init_transactions(left))
        self._producer.begin_transaction()

    @property
    def pending(self) -> int:
        """Records made since the last commit started."""
        return self._made

    @property
    def committing(self) -> bool:
        """True while a commit runs on the committer thread."""
        return self._committing is not None

    def commit_age(self) -> float:
        """Seconds the commit under way has run (0 when none runs). librdkafka can block in
        a transactional call past its timeout when a coordinator goes away (librdkafka#5511):
        the caller gives up on such a process rather than wait for ever."""
        pending = self._committing
        if pending is None or pending.done.done():
            return 0.0
        return self._clock() - pending.started

    def produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
        replay: bool = True,
    ) -> None:
        """Keep a record for the open transaction. `replay`: made again if the transaction
        is aborted (outcomes, dead letters); changelog records are not, their owner writes
        them anew (`Settled.committed` is False)."""
        if replay:
            self._replay.append((topic, key, value, headers, partition))
        self._made += 1
        if headers:
            kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers}
            if partition is not None:
                kwargs["partition"] = partition
            self._unsent_headed.append((topic, kwargs))
            return
        lane = self._unsent.get((topic, partition))
        if lane is None:
            lane = self._unsent[(topic, partition)] = []
        lane.append({"key": key, "value": value})

    def commit(self, offsets: list[TopicPartition], group: object, payload: P) -> None:
        """Close the open transaction with `offsets` (consumer `group` metadata) and commit
        it on the committer thread; `settle` returns `payload` with the result."""
        assert self._committing is None
        started = self._clock()
        outputs, self._replay = self._replay, []
        self._made = 0
        done: Future[float]
        try:
            self._send_unsent()
        except KafkaException as exc:  # settled like a failed commit: aborted, made again
            self._unsent.clear()
            self._unsent_headed.clear()
            done = Future()
            done.set_exception(exc)
        else:
            done = self._committer.submit(self._commit, offsets, group)
        self._committing = _Committing(offsets, outputs, payload, started, done)

    def settle(self, wait: bool = True) -> Settled[P] | None:
        """The result of the commit under way, once done (None without `wait` while it
        runs, or when none runs). An aborted transaction's replayable records are queued
        again ahead of those made since; a fatal error is raised."""
        pending = self._committing
        if pending is None or (not wait and not pending.done.done()):
            return None
        self._committing = None
        try:
            finished = pending.done.result()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if not error.txn_requires_abort():
                # Fenced or fatal: state in memory is ahead of Kafka; the only safe way on
                # is a restart that restores from the changelog.
                logger.critical(
                    "Kafka transaction failed (%s); exiting so state is restored from the "
                    "changelog",
                    error,
                )
                raise
            logger.warning("Kafka transaction aborted (%s); retrying its writes", error)
            self._abort(pending)
            return Settled(False, pending.offsets, pending.payload, 0.0, error)
        self._producer.begin_transaction()
        return Settled(True, pending.offsets, pending.payload, finished - pending.started)

    def close(self, timeout_s: float = 10.0) -> None:
        """Abort what is open and stop the committer thread."""
        with contextlib.suppress(KafkaException):  # nothing open, or fenced: fine
            self._producer.abort_transaction(timeout_s)
        self._producer.flush(timeout_s)
        self._committer.shutdown(wait=True)

    # -- the committer thread --------------------------------------------------------------
    def _commit(self, offsets: list[TopicPartition], group: object) -> float:
        producer = self._producer
        # Records undeliverable for message.timeout.ms fail, and the transaction with them.
        while producer.flush(10.0):
            logger.warning("Kafka has not acknowledged %d records yet; waiting", len(producer))
        if offsets:
            self._retrying(lambda left: producer.send_offsets_to_transaction(offsets, group, left))
        self._retrying(lambda left: producer.commit_transaction(left))
        return self._clock()

    @staticmethod
    def _retrying(call: Callable[[float], object], attempt_s: float = 30.0) -> None:
        """`call(timeout)` again for as long as it fails with a retriable error."""
        delay = 0.1
        while True:
            try:
                call(attempt_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or error.fatal():
                    raise
                logger.warning("Kafka: %s; retrying", error.str())
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    # -- helpers ---------------------------------------------------------------------------
    def _send_unsent(self) -> None:
        """Queue the kept records in librdkafka: one `produce_batch` per topic and partition
        costs a third of a `produce` per record. Room is made first, so a full queue cannot
        fail a record in the middle and reorder its key."""
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
                while len(producer) + len(chunk) > self._room:
                    producer.poll(0.05)
                if partition is None:
                    queued = producer.produce_batch(topic, chunk)
                else:
                    queued = producer.produce_batch(topic, chunk, partition=partition)
                if queued != len(chunk):
                    error = next(r["_error"] for r in chunk if "_error" in r)
                    raise KafkaException(error)
        self._unsent.clear()

    def _abort(self, aborted: _Committing[P]) -> None:
        """Abort; the aborted transaction's replayable records go into the next one ahead
        of everything made since."""
        self._retrying(lambda left: self._producer.abort_transaction(left))
        self._producer.begin_transaction()
        newer, newer_headed, newer_replay = self._unsent, self._unsent_headed, self._replay
        made = self._made
        self._unsent, self._unsent_headed, self._replay = {}, [], []
        for topic, key, value, headers, partition in aborted.outputs:
            self.produce(topic, key, value, headers, partition)
        for lane, records in newer.items():
            self._unsent.setdefault(lane, []).extend(records)
        self._unsent_headed.extend(newer_headed)
        self._replay.extend(newer_replay)
        self._made += made
