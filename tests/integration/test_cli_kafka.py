"""`dlq redrive` on the real broker: a JSON dry run with no progress bar off a terminal, and a
paced redrive committed per time slice under a short transaction timeout."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from consumer import cli
from tests.integration.harness import read_all

pytestmark = pytest.mark.kafka


def dead_letters(bootstrap: str, dlq: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in range(count):
        producer.produce(
            dlq,
            key=f"p1|demo|1|c{n}".encode(),
            value=f"event-{n}".encode(),
            headers=[
                ("imconnector.error.class", b"exhausted"),
                ("imconnector.error.code", b"QUERY_LIMIT_EXCEEDED"),
                ("imconnector.event_id", f"e-{n}".encode()),
                ("__connect.errors.partition", b"0"),
            ],
            partition=0,
        )
    assert producer.flush(30) == 0


def test_dry_run_json_and_a_paced_redrive(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in list(os.environ):
        if key.upper().startswith("IMCONNECTOR_"):
            monkeypatch.delenv(key)
    source = topic_factory(1)
    dlq = topic_factory(1, name=f"{source}.dlq")
    dead_letters(kafka_bootstrap, dlq, 4)
    monkeypatch.setenv("IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("IMCONNECTOR_SOURCE_TOPICS", source)
    monkeypatch.setenv("IMCONNECTOR_GROUP_ID", unique("redrive"))
    # A 3 s transaction timeout: a redrive of 4 records at 1/s must commit in slices.
    monkeypatch.setenv("IMCONNECTOR_KAFKA__CONFIG", json.dumps({"transaction.timeout.ms": "3000"}))

    assert cli.main(["dlq", "redrive", "--dry-run", "--json"]) == 0
    captured = capsys.readouterr()
    listing = json.loads(captured.out)
    assert listing["dry_run"] is True and listing["redriven"] == 4
    assert [row["event_id"] for row in listing["records"]] == ["e-0", "e-1", "e-2", "e-3"]
    assert "\r[" not in captured.err  # no progress bar: stderr is not a terminal

    assert cli.main(["dlq", "redrive", "--rate", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["redriven"] == 4 and report["by_class"] == {"exhausted": 4}
    replayed = read_all(kafka_bootstrap, source, expect=4)
    assert sorted(msg.value() for msg in replayed) == [f"event-{n}".encode() for n in range(4)]
    # the redrive group committed past every dead letter: a second run finds nothing
    assert cli.main(["dlq", "redrive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["redriven"] == 0
