"""End to end on the real broker: every event kind in both wire formats reaches the portal
as the right method with the right content; poison goes to the dead-letter topic; a
backlog goes out in full batches; no request leaves before its in-flight mark is
committed."""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from consumer.bitrix.oauth import MemoryTokenStore
from consumer.codec import ChatEventEncoder, SchemaRegistryClient
from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    File,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    ReadConfirmed,
)
from consumer.core.mapping import BATCHABLE, SEND
from consumer.core.state import IN_FLIGHT
from consumer.dispatch.batch import Batch
from consumer.dispatch.dispatcher import Dispatcher
from consumer.engine.engine import Engine
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    OutcomeWatcher,
    applied_call_list,
    chat_event,
    expected_calls,
    final_outcomes,
    line_simulator,
    make_settings,
    produce,
    produce_raw,
    read_all,
    shuffled_workload,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with line_simulator() as server:
        yield server


def six_kinds(chat: str) -> list[ChatEvent]:
    return [
        chat_event(
            chat,
            1,
            MessageSent(
                "m1",
                "Hello [b]there[/b]",
                files=(File("https://files.example.com/a.png", "a.png"),),
                chat_name="Support",
                chat_url="https://t.me/x",
            ),
        ),
        chat_event(chat, 2, ChatRenamed("VIP customer")),
        chat_event(chat, 3, MessageEdited("m1", "Hello again")),
        chat_event(chat, 4, DeliveryConfirmed(4242, 777, ("op-1", "op-2"), 1_764_000_009_000)),
        chat_event(chat, 5, ReadConfirmed(4242, 777, ("op-1",))),
        chat_event(chat, 6, MessageDeleted("m1")),
    ]


@pytest.mark.parametrize("wire", ["single-object", "confluent"])
def test_each_event_kind_reaches_the_portal_as_its_method(
    kafka_bootstrap, topic_factory, unique, sim, wire
):
    topic = topic_factory(3)
    # send.status.reading is off by default (a server stub): switched on to see it go out.
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"send_status_reading": True}
    )
    chat = f"chat-{wire}"
    with SchemaRegistryClient(f"{sim.url}/registry") as registry, EngineThread(settings) as running:
        encoder = ChatEventEncoder(
            wire, registry if wire == "confluent" else None, subject=f"{topic}-value"
        )
        produce(kafka_bootstrap, topic, six_kinds(chat), [encoder])
        wait_until(lambda: running.outcome("applied") >= 6, 60, "six applied events")
    records = [r for r in sim.portal.call_records() if r.http_status == 200]
    by_method = {r.method: {k.upper(): v for k, v in r.params.items()} for r in records}
    assert [r.method for r in records] == [
        "imconnector.send.messages",
        "imconnector.chat.name.set",
        "imconnector.update.messages",
        "imconnector.send.status.delivery",
        "imconnector.send.status.reading",
        "imconnector.delete.messages",
    ]
    for params in by_method.values():
        assert params["CONNECTOR"] == CONNECTOR and int(params["LINE"]) == LINE
    send = by_method["imconnector.send.messages"]["MESSAGES"][0]
    assert send["user"] == {
        "id": f"user-{chat}",
        "name": "Anna",
        "last_name": "Ivanova",
        "email": "anna@example.com",
    }
    assert send["message"]["id"] == "m1" and send["message"]["text"] == "Hello [b]there[/b]"
    assert send["message"]["date"] == 1_764_000_001
    assert send["message"]["files"] == [{"url": "https://files.example.com/a.png", "name": "a.png"}]
    assert send["chat"] == {"id": chat, "name": "Support", "url": "https://t.me/x"}
    rename = by_method["imconnector.chat.name.set"]
    assert (rename["CHAT_ID"], rename["NAME"], rename["USER_ID"]) == (
        chat,
        "VIP customer",
        f"user-{chat}",
    )
    edit = by_method["imconnector.update.messages"]["MESSAGES"][0]
    assert edit["message"]["id"] == "m1" and edit["message"]["text"] == "Hello again"
    assert edit["chat"]["id"] == chat
    delivery = by_method["imconnector.send.status.delivery"]["MESSAGES"][0]
    assert delivery["im"] == {"chat_id": 4242, "message_id": 777}
    assert delivery["message"] == {"id": ["op-1", "op-2"], "date": 1_764_000_009}
    reading = by_method["imconnector.send.status.reading"]["MESSAGES"][0]
    assert reading["im"] == {"chat_id": 4242, "message_id": 777}
    assert reading["message"] == {"id": ["op-1"]}
    delete = by_method["imconnector.delete.messages"]["MESSAGES"][0]
    assert delete["message"] == {"id": "m1"} and delete["chat"] == {"id": chat}
    # The portal really holds the chat: one session, the message deleted, the new name.
    state = sim.portal.state()
    assert "VIP customer" in str(state)


def test_poison_records_are_dead_lettered_and_the_partition_keeps_flowing(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(1)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    encoder = ChatEventEncoder("single-object")
    key = f"{PORTAL}|{CONNECTOR}|{LINE}|chat-p".encode()
    with EngineThread(settings) as running:
        produce_raw(kafka_bootstrap, topic, key, b"\x07not avro at all")
        produce_raw(kafka_bootstrap, topic, key, b"\x00" + struct.pack(">I", 999_999) + b"\x02")
        produce(
            kafka_bootstrap, topic, [chat_event("chat-p", 1, MessageSent("m1", "after"))], [encoder]
        )
        wait_until(lambda: running.outcome("applied") >= 1, 60, "the good record applied")
        assert running.outcome("dead_lettered") == 2
    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=2)
    assert [m.value() for m in dead] == [
        b"\x07not avro at all",
        b"\x00" + struct.pack(">I", 999_999) + b"\x02",
    ]
    headers = [dict(m.headers()) for m in dead]
    assert [h["imconnector.error.code"] for h in headers] == [
        b"UNKNOWN_MAGIC",
        b"UNKNOWN_SCHEMA_ID",
    ]
    for h, offset in zip(headers, (b"0", b"1"), strict=True):
        assert h["imconnector.error.class"] == b"poison"
        assert h["__connect.errors.topic"] == topic.encode()
        assert h["__connect.errors.offset"] == offset
        assert h["trace"] == b"abc"  # original headers kept
    assert all(m.key() == key for m in dead)
    sends = [r for r in sim.portal.call_records() if r.method == "imconnector.send.messages"]
    assert len(sends) == 1


def test_shuffled_and_duplicated_events_give_exactly_the_expected_calls_in_order(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(4)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    scripts, events = shuffled_workload(11, 150, 3, 12)
    with SchemaRegistryClient(f"{sim.url}/registry") as registry:
        encoders = [
            ChatEventEncoder("single-object"),
            ChatEventEncoder("confluent", registry, subject=f"{topic}-value"),
        ]
    with EngineThread(settings) as running:
        produce(kafka_bootstrap, topic, events, encoders)
        wait_until(
            lambda: running.outcomes_total() >= len(events), 120, "every record to reach an outcome"
        )
        duplicates = running.outcome("duplicate")
    assert duplicates == len(events) - sum(len(s) for s in scripts)
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id


def test_a_backlog_of_mixed_methods_goes_out_in_full_batches(
    kafka_bootstrap, topic_factory, unique, sim
):
    """Each method has its own queue: a backlog fills whole requests per method instead of
    spreading every round over all methods (which made sends average half a batch)."""
    topic = topic_factory(3)
    scripts, events = shuffled_workload(5, 1500, 2, 8)
    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    settings = make_settings(
        kafka_bootstrap, topic, unique("g"), sim, engine={"linger_ms": 20, "batch_size": 50}
    )
    with (
        EngineThread(settings),
        OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes,
    ):
        ids = {e.event_id for e in events}
        wait_until(lambda: outcomes.finished(ids), 180, "a committed outcome per event")
    requests: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    for record in sim.portal.call_records():
        if record.http_status == 200 and record.method in BATCHABLE:
            requests[record.method] += 1
            elements[record.method] += len(record.params["MESSAGES"])
    sends = requests[SEND] / math.ceil(elements[SEND] / 50)
    print(f"batching: {dict(requests)} requests for {dict(elements)} elements ({sends:.2f})")
    assert elements[SEND] >= 1500
    # The old planner gave 1.5 here, this one 1.03-1.10 (also with a CPU hog running). The
    # 1.1 target is the benchmark's, over a 10k-chat burst; this 1,500-chat one ends in a
    # proportionally longer tail of partial batches, so the bound leaves room for a slow box.
    assert sends <= 1.2, f"{requests[SEND]} send requests for {elements[SEND]} messages"
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id


class LedgerWatch:
    """Follows an engine's transactions: the chat states each committed one carried, and
    whether every call handed to the dispatcher is marked in flight in its chat's committed
    state. With `abort_every`, every such commit made while requests are out fails as an
    abortable error would (e.g. ILLEGAL_GENERATION in a rebalance), once the loop has made
    records for the next transaction (their completions' outcomes).

    It watches through what the engine is given (`build`): a producer subclass and a
    wrapper around its dispatcher."""

    def __init__(self, changelog: str, abort_every: int = 0) -> None:
        self.changelog = changelog
        self.abort_every = abort_every
        self.submitted: Counter[str] = Counter()
        self.uncommitted: list[tuple[str, str]] = []
        self.commits = self.candidates = self.aborted = self.aborted_with_newer = 0
        # Chat states as handed to the open transaction, and as last committed.
        self.made: dict[tuple[int, bytes], bytes | None] = {}
        self.committed: dict[tuple[int, bytes], bytes | None] = {}
        self.engine: Engine | None = None

    def build(self, settings: Settings, metrics: Metrics) -> Engine:
        """What `build_engine` makes (a dispatch process, tokens in memory), watched."""
        watch = self

        class WatchedProducer(Producer):
            def produce_batch(self, topic: str, records: list[Any], **kwargs: Any) -> int:
                if topic == watch.changelog and "partition" in kwargs:
                    for record in records:
                        watch.made[(kwargs["partition"], record["key"])] = record["value"]
                return super().produce_batch(topic, records, **kwargs)

            def commit_transaction(self, *args: Any) -> None:
                watch.before_commit()
                carried = dict(watch.made)
                watch.made.clear()
                super().commit_transaction(*args)
                watch.committed.update(carried)

        class WatchedDispatcher:
            def __init__(self, inner: Dispatcher) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            def submit(self, batch: Batch) -> None:
                watch.check_marks(batch)
                self.inner.submit(batch)

        dispatcher = WatchedDispatcher(
            Dispatcher.from_settings(settings, metrics, MemoryTokenStore())
        )
        self.engine = Engine(settings, metrics, dispatcher, producer_factory=WatchedProducer)
        return self.engine

    def before_commit(self) -> None:
        """On the committer thread, once the records are flushed; the loop makes no
        changelog record meanwhile."""
        engine = self.engine
        assert engine is not None
        self.commits += 1
        out = engine.dispatcher.in_flight > 0
        self.candidates += out
        if out and self.abort_every and self.candidates % self.abort_every == 0:
            self.made.clear()  # an aborted transaction commits none of them
            deadline = time.monotonic() + 2.0
            while not engine.writer.pending and time.monotonic() < deadline:
                time.sleep(0.001)  # until an outcome waits for the next transaction
            self.aborted += 1
            self.aborted_with_newer += bool(engine.writer.pending)
            # Fails where the offsets would: after the flush (the engine flushed them).
            raise KafkaException(
                KafkaError(KafkaError.ILLEGAL_GENERATION, "injected", txn_requires_abort=True)
            )

    def check_marks(self, batch: Batch) -> None:
        for (chat, call), (_, partition, _) in zip(batch.calls, batch.routes, strict=True):
            state = self.committed.get((partition, chat.encode()))
            # A waiting call's entry in its chat's record: [offset, status, attempts, ...]
            # (PendingCall.ref).
            entries = orjson.loads(state).get("o", []) if state else []
            mark = next((e for e in entries if e[0] == call.origin[2]), None)
            if mark is None or mark[1:3] != [IN_FLIGHT, call.attempts]:
                self.uncommitted.append((batch.method, call.event_id))
        self.submitted[batch.method] += 1


def test_no_request_leaves_before_its_in_flight_mark_is_committed(
    kafka_bootstrap, topic_factory, unique, sim
):
    """The send ledger covers every method: when a batch is handed to the dispatcher, each
    of its calls is marked in flight in its chat's state in a committed transaction, so a
    crash can never replay a call the portal took without recording it as ambiguous."""
    topic = topic_factory(2)
    _, events = shuffled_workload(8, 120, 3, 10)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    ledger = LedgerWatch(settings.changelog_topic(topic))
    running = EngineThread(settings, build=ledger.build)
    with running, OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes:
        produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
        ids = {e.event_id for e in events}
        wait_until(lambda: outcomes.finished(ids), 120, "a committed outcome per event")
    others: dict[str, Any] = {m: n for m, n in ledger.submitted.items() if m != SEND}
    assert len(others) >= 4, f"the workload must exercise the other methods: {ledger.submitted}"
    uncommitted = ledger.uncommitted
    assert uncommitted == [], f"{len(uncommitted)} calls left before their mark was committed"


def test_an_aborted_transaction_is_written_again_ahead_of_what_came_after(
    kafka_bootstrap, topic_factory, unique, sim
):
    """Transactions are committed while the loop goes on. When one is aborted, its outputs
    and states go into the next one ahead of the records made meanwhile, and its requests
    wait for that: every event still ends with one committed outcome, in order per chat,
    every call is applied once and in order, and the changelog ends with each chat done."""
    topic = topic_factory(2)
    scripts, events = shuffled_workload(9, 300, 3, 10)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    changelog = settings.changelog_topic(topic)
    ledger = LedgerWatch(changelog, abort_every=2)
    running = EngineThread(settings, build=ledger.build)
    with running, OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes:
        produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
        ids = {e.event_id for e in events}
        wait_until(lambda: outcomes.finished(ids), 120, "a committed outcome per event")
        aborted = running.metrics.registry.get_sample_value(
            "imconnector_transactions_total", {"result": "aborted"}
        )
    assert ledger.aborted_with_newer >= 2, (ledger.aborted, ledger.aborted_with_newer)
    assert aborted == ledger.aborted
    assert ledger.uncommitted == [], "a request left before its mark was committed"
    seen = applied_call_list(sim)
    for script in scripts:
        assert seen[script[0].chat_id] == expected_calls(script), script[0].chat_id
    final, _ = final_outcomes(kafka_bootstrap, f"{topic}.outcomes")  # one per event
    assert final.keys() == ids
    applied: dict[str, list[int]] = {}
    for msg in read_all(kafka_bootstrap, f"{topic}.outcomes"):
        doc = orjson.loads(msg.value())
        if doc["outcome"] == "applied":
            applied.setdefault(doc["chat"], []).append(doc["seq"])
    assert all(seqs == sorted(seqs) for seqs in applied.values()), applied
    last: dict[bytes, bytes | None] = {}
    for msg in read_all(kafka_bootstrap, changelog):
        last[msg.key()] = msg.value()
    for script in scripts:
        key = script[-1].key.encode()
        doc = orjson.loads(last[key] or b"{}")
        assert doc.get("w") == max(e.sequence or 0 for e in script), script[-1].key
        assert not doc.get("o"), f"{script[-1].key} still has calls waiting: {doc}"
