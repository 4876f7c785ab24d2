"""The transactional writer follows librdkafka's contract (issue 15 item 6): retriable errors
are retried, abortable ones abort and replay, fatal ones are raised."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.kafka.writer import TransactionalWriter


def error(code: int, *, retriable: bool = False, abort: bool = False, fatal: bool = False):
    return KafkaException(
        KafkaError(code, "injected", retriable=retriable, txn_requires_abort=abort, fatal=fatal)
    )


class FakeProducer:
    """Just enough of a transactional `Producer`; `fail` holds the errors each method raises
    next, in order."""

    def __init__(self, fail: dict[str, list[KafkaException]] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[str] = []
        self.produced: list[tuple[str, Any]] = []
        self.committed: list[list[tuple[str, Any]]] = []
        self._open: list[tuple[str, Any]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        pending = self.fail.get(name)
        if pending:
            raise pending.pop(0)

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        self._open = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self._open.append((topic, kwargs.get("value")))

    def produce_batch(self, topic: str, records: list[dict[str, Any]], **kwargs: Any) -> int:
        self._open.extend((topic, r["value"]) for r in records)
        return len(records)

    def __len__(self) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self._call("flush")
        return 0

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self._call("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction")
        self.committed.append(self._open)

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")
        self._open = []


def writer_for(producer: FakeProducer) -> TransactionalWriter[str]:
    writer: TransactionalWriter[str] = TransactionalWriter(producer)  # type: ignore[arg-type]
    writer.start()
    return writer


OFFSETS = [TopicPartition("t", 0, 5)]


def test_retriable_commit_errors_are_retried_not_aborted():
    producer = FakeProducer(
        {
            "commit_transaction": [
                error(KafkaError._TIMED_OUT, retriable=True),
                error(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True),
            ],
            "send_offsets_to_transaction": [
                error(KafkaError.NOT_COORDINATOR, retriable=True),
            ],
        }
    )
    writer = writer_for(producer)
    writer.produce("out", b"k", b"v1")
    writer.commit(OFFSETS, object(), "round-1")
    settled = writer.settle()
    assert settled is not None and settled.committed and settled.payload == "round-1"
    assert producer.calls.count("commit_transaction") == 3
    assert producer.calls.count("send_offsets_to_transaction") == 2
    assert "abort_transaction" not in producer.calls
    assert producer.committed == [[("out", b"v1")]]


def test_an_abortable_error_aborts_and_the_records_go_into_the_next_transaction_first():
    producer = FakeProducer(
        {"commit_transaction": [error(KafkaError.ILLEGAL_GENERATION, abort=True)]}
    )
    writer = writer_for(producer)
    writer.produce("out", b"k", b"first")
    writer.produce("changelog", b"c", b"state", replay=False)  # its owner writes it anew
    writer.commit(OFFSETS, object(), "round-1")
    writer.produce("out", b"k", b"second")  # made while the first was being committed
    settled = writer.settle()
    assert settled is not None and not settled.committed and settled.payload == "round-1"
    assert producer.calls.count("abort_transaction") == 1
    writer.commit(OFFSETS, object(), "round-2")
    again = writer.settle()
    assert again is not None and again.committed
    assert producer.committed == [[("out", b"first"), ("out", b"second")]]


def test_a_fatal_error_is_raised():
    producer = FakeProducer({"commit_transaction": [error(KafkaError._FENCED, fatal=True)]})
    writer = writer_for(producer)
    writer.produce("out", b"k", b"v")
    writer.commit(OFFSETS, object(), "round-1")
    with pytest.raises(KafkaException):
        writer.settle()
    assert "abort_transaction" not in producer.calls


def test_init_transactions_waits_out_a_broker_that_is_not_there_yet():
    producer = FakeProducer(
        {"init_transactions": [error(KafkaError._TRANSPORT, retriable=True)] * 3}
    )
    writer_for(producer)
    assert producer.calls[:4] == ["init_transactions"] * 4
    assert producer.calls[4] == "begin_transaction"
