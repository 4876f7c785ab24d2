"""The command line uses the service's settings: `produce` builds its producer from the
Kafka security settings; a paced redrive commits per time slice, never one long transaction."""

from __future__ import annotations

import io
import json
import os
from typing import Any, ClassVar

import pytest
from confluent_kafka import Message

from consumer import cli
from consumer.admin import redrive as redrive_module
from consumer.admin.redrive import Pacer, RedriveReport


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("IMCONNECTOR_"):
            monkeypatch.delenv(key)


class CapturingProducer:
    """Stands in for confluent_kafka.Producer: keeps its config and what it was given."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.made.append(conf)
        self.records: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.records.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


EVENT = {
    "event_id": "0b8e1c5e-5f0c-4c57-9a55-0f3e6c1d2b10",
    "portal": "p1",
    "connector": "demo",
    "line": 1,
    "chat_id": "c1",
    "occurred_at": 1,
    "type": "MessageSent",
    "payload": {"message_id": "m1", "text": "hi"},
}


def test_produce_uses_the_kafka_security_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("confluent_kafka.Producer", CapturingProducer)
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "kafka-0.kafka:9093")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__SASL_USERNAME", "producer")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__SASL_PASSWORD", "scram-secret")
    monkeypatch.setenv("IMCONNECTOR_KAFKA__SSL_CA_LOCATION", "/etc/kafka/ca.crt")
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(EVENT) + "\n")
    CapturingProducer.made.clear()
    assert cli.main(["produce", "--topic", "chat-events", "--file", str(events)]) == 0
    (conf,) = CapturingProducer.made
    assert conf["bootstrap.servers"] == "kafka-0.kafka:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "scram-secret"
    assert conf["ssl.ca.location"] == "/etc/kafka/ca.crt"
    assert "scram-secret" not in capsys.readouterr().out
    # --bootstrap-servers still overrides the address only
    CapturingProducer.made.clear()
    cli.main(["produce", "--topic", "t", "--file", str(events), "--bootstrap-servers", "b:1"])
    assert CapturingProducer.made[0]["bootstrap.servers"] == "b:1"
    assert CapturingProducer.made[0]["sasl.password"] == "scram-secret"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class TransactionLog:
    """A transactional producer that records each transaction's span and contents."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.transactions: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def begin_transaction(self) -> None:
        assert self._open is None, "a transaction is already open"
        self._open = {"began": self.clock(), "records": [], "offsets": []}

    def produce(self, topic: str, **kwargs: Any) -> None:
        assert self._open is not None, "produce outside a transaction"
        self._open["records"].append(kwargs["value"])

    def poll(self, timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        assert self._open is not None
        self._open["offsets"] = [(tp.partition, tp.offset) for tp in offsets]

    def commit_transaction(self, timeout: float) -> None:
        assert self._open is not None
        self._open["committed"] = self.clock()
        self.transactions.append(self._open)
        self._open = None


class GroupConsumer:
    def consumer_group_metadata(self) -> object:
        return object()


def dead_letter(offset: int) -> Message:
    return Message(
        topic="chat-events.dlq",
        partition=0,
        offset=offset,
        key=b"p1|demo|1|c1",
        value=f"event-{offset}".encode(),
        headers=[("imconnector.error.class", b"exhausted"), ("__connect.errors.partition", b"0")],
    )


def test_a_slow_redrive_commits_per_time_slice() -> None:
    clock = FakeClock()
    producer = TransactionLog(clock)
    # 0.5 records/s: 12 records take 24 s; a transaction may last 20 s (a third of 60 s).
    pacer = Pacer(0.5, 20.0, clock=clock, sleep=clock.sleep)
    pending = [dead_letter(offset) for offset in range(12)]
    report = RedriveReport()
    redrive_module._flush(
        producer,  # type: ignore[arg-type]
        GroupConsumer(),  # type: ignore[arg-type]
        "chat-events",
        pending,
        {0: 14},  # read up to 14 (two trailing records were filtered out)
        "chat-events.dlq",
        report,
        pacer,
    )
    assert report.redriven == 12
    assert len(producer.transactions) >= 2
    for transaction in producer.transactions:
        assert transaction["committed"] - transaction["began"] < 20.0
    produced = [v for t in producer.transactions for v in t["records"]]
    assert produced == [f"event-{offset}".encode() for offset in range(12)]
    # each slice commits the offsets of what it produced; the last one all that was read
    for transaction in producer.transactions[:-1]:
        last = int(transaction["records"][-1].decode().split("-")[1])
        assert transaction["offsets"] == [(0, last + 1)]
    assert producer.transactions[-1]["offsets"] == [(0, 15)]


def test_a_very_slow_rate_never_holds_a_transaction_open_while_waiting() -> None:
    clock = FakeClock()
    producer = TransactionLog(clock)
    pacer = Pacer(0.01, 20.0, clock=clock, sleep=clock.sleep)  # one record per 100 s
    redrive_module._flush(
        producer,  # type: ignore[arg-type]
        GroupConsumer(),  # type: ignore[arg-type]
        "chat-events",
        [dead_letter(0), dead_letter(1), dead_letter(2)],
        {0: 2},
        "chat-events.dlq",
        RedriveReport(),
        pacer,
    )
    assert len(producer.transactions) == 3
    assert all(t["committed"] - t["began"] < 20.0 for t in producer.transactions)


def test_progress_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert redrive_module._isatty(Terminal())
    assert not redrive_module._isatty(io.StringIO())
