"""Restarts, crashes and rebalances on the real broker (architecture §6 invariants 1-4).

* a consumer SIGKILLed mid-stream and restarted applies nothing twice, except a call that
  was in flight at the kill, which is recorded as ambiguous;
* two consumers in one group, a third joining mid-stream: per-chat order, no duplicates;
* a partition's state is restored from the changelog after reassignment;
* calls still waiting at a handover are restored from their body records and sent once,
  and every finished call's body record is deleted (orphans too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace

import pytest
from confluent_kafka import Producer

from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, ChatRenamed, ExternalUser, MessageEdited, MessageSent
from consumer.core.mapping import SEND
from consumer.kafka.clients import restore_reader
from consumer.kafka.restore import read_partition_to_end
from consumer.settings import Settings
from consumer.store import changelog as store_module
from consumer.store.encoding import block_key, body_key, decode_block, key_kind
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    OutcomeWatcher,
    applied_call_list,
    chat_event,
    check_calls,
    final_outcomes,
    line_simulator,
    make_settings,
    portal_settings,
    produce,
    shuffled_workload,
    side_records,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def sim():
    with line_simulator(latency_ms=15) as server:
        yield server


def test_sigkill_mid_stream_then_restart_applies_nothing_twice(
    kafka_bootstrap, topic_factory, unique, sim, tmp_path
):
    topic = topic_factory(3)
    group = unique("g")
    scripts, events = shuffled_workload(5, 120, 4, 12)
    settings = make_settings(kafka_bootstrap, topic, group, sim)
    env = {
        **os.environ,
        "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "IMCONNECTOR_SOURCE_TOPICS": topic,
        "IMCONNECTOR_GROUP_ID": group,
        "IMCONNECTOR_INSTANCE_ID": "kill-test",
        "IMCONNECTOR_HTTP_PORT": "0",
        "IMCONNECTOR_OUTCOMES_TOPIC": settings.outcomes_topic,
        "IMCONNECTOR_TOKENS_TOPIC": settings.tokens_topic,
        "IMCONNECTOR_SCHEMA_REGISTRY_URL": f"{sim.url}/registry",
        "IMCONNECTOR_PORTALS": json.dumps({PORTAL: portal_settings(sim)}),
        "IMCONNECTOR_ENGINE__COMMIT_INTERVAL_MS": "20",
        "IMCONNECTOR_ENGINE__BATCH_SIZE": "5",
        # Sends in flight at the kill are looked up once the simulator is done with them.
        "IMCONNECTOR_ENGINE__RECONCILE_SETTLE_S": "0.5",
        "IMCONNECTOR_LOG_FORMAT": "json",
    }
    log = open(tmp_path / "consumer.log", "wb")  # noqa: SIM115 - closed below

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    first = start()
    try:
        wait_until(lambda: len(sim.portal.call_records()) >= 40, 90, "calls before the kill")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        second = start()
        try:
            distinct = {e.event_id for e in events}
            wait_until(
                lambda: (
                    len(final_outcomes(kafka_bootstrap, settings.outcomes_topic)[0])
                    >= len(distinct)
                ),
                180,
                "a final outcome for every event",
                interval=1.0,
            )
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    final, ambiguous = final_outcomes(kafka_bootstrap, settings.outcomes_topic)
    assert set(final) == {e.event_id for e in events}
    repeats = check_calls(sim, scripts, ambiguous)
    assert repeats <= sum(ambiguous.values())
    print(
        f"kill test: {len(events)} records, {len(final)} events, "
        f"{sum(ambiguous.values())} ambiguous resends, {repeats} repeated calls; "
        f"{dict(side_records(kafka_bootstrap, settings.outcomes_topic))}"
    )


def test_rebalance_two_consumers_and_a_third_joining_keeps_order(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(6)
    group = unique("g")
    scripts, events = shuffled_workload(9, 200, 4, 10)
    half = len(events) // 2
    encoder = [ChatEventEncoder("single-object")]
    engines = [
        EngineThread(make_settings(kafka_bootstrap, topic, group, sim, instance_id=f"r{i}"))
        for i in range(3)
    ]
    with engines[0], engines[1]:
        produce(kafka_bootstrap, topic, events[:half], encoder)
        wait_until(lambda: len(sim.portal.call_records()) >= 30, 60, "first calls")
        with engines[2]:
            # The join is an event to await: the second half is produced only once the
            # rebalance has handed the third consumer its share, so it takes real work.
            wait_until(
                lambda: all(e.engine.parts for e in engines),
                120,
                "every consumer to own partitions",
            )
            produce(kafka_bootstrap, topic, events[half:], encoder)
            ids = {e.event_id for e in events}
            with OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes:
                wait_until(lambda: outcomes.finished(ids), 180, "a committed outcome per event")
            owned = [set(e.engine.parts) for e in engines]
            assert all(owned), "each consumer still owns partitions"
            assert sum(len(o) for o in owned) == len(set().union(*owned)) == 6, "disjoint, all"
    _, ambiguous = final_outcomes(kafka_bootstrap, f"{topic}.outcomes")
    assert check_calls(sim, scripts, ambiguous) == 0
    assert sum(ambiguous.values()) == 0


def test_state_is_restored_after_reassignment(kafka_bootstrap, topic_factory, unique, sim):
    topic = topic_factory(2)
    group = unique("g")
    encoder = [ChatEventEncoder("single-object")]

    def event(seq: int, payload) -> ChatEvent:
        return ChatEvent(
            event_id=f"00000000-0000-4000-8000-{seq:012d}",
            portal=PORTAL,
            connector=CONNECTOR,
            line=LINE,
            chat_id="chat-r",
            occurred_at=seq,
            payload=payload,
            sequence=seq,
            user=None,
        )

    first_send = replace(event(1, MessageSent("m1", "hi")), user=ExternalUser(id="u-r"))
    with EngineThread(make_settings(kafka_bootstrap, topic, group, sim, instance_id="a")) as a:
        produce(kafka_bootstrap, topic, [first_send], encoder)
        wait_until(lambda: a.outcome("applied") >= 1, 60, "the first send")
    # Another instance takes over: it must know the chat has a session and its watermark.
    with EngineThread(make_settings(kafka_bootstrap, topic, group, sim, instance_id="b")) as b:
        wait_until(lambda: b.engine.ready, 60, "restored and ready")
        produce(kafka_bootstrap, topic, [first_send, event(2, ChatRenamed("Restored"))], encoder)
        wait_until(lambda: b.outcome("applied") >= 1, 60, "the rename")
        assert b.outcome("duplicate") == 1
        restored = b.metrics.registry.get_sample_value("imconnector_state_restore_records_total")
        assert restored and restored >= 1
    methods = [r.method for r in sim.portal.call_records() if r.http_status == 200]
    assert methods == ["imconnector.send.messages", "imconnector.chat.name.set"]
    by_chat = defaultdict(list)
    for r in sim.portal.call_records():
        by_chat[r.method].append(r.params)
    assert by_chat["imconnector.chat.name.set"][0]["USER_ID"] == "u-r"


def _changelog(settings: Settings, topic: str, partitions: int) -> dict[bytes, bytes | None]:
    """The committed changelog of `topic` as compaction leaves it: the last value per key."""
    latest: dict[bytes, bytes | None] = {}
    reader = restore_reader(settings)
    try:
        changelog = settings.changelog_topic(topic)
        for partition in range(partitions):
            for key, value in read_partition_to_end(reader, changelog, partition):
                latest[key] = value
    finally:
        reader.close()
    return latest


def test_waiting_calls_survive_a_handover_and_finished_calls_leave_no_body_records(
    kafka_bootstrap, topic_factory, unique, sim
):
    """Calls wait in outboxes while the portal fails; the instance stops; the next one
    restores them from their bodies (blocks of them, one per partition and commit) and
    sends each once. Afterwards no body is left: finished calls' blocks are deleted, and
    so are orphans found at restore (a block, or a body record as written before blocks,
    whose tombstone an aborted transaction lost)."""
    topic = topic_factory(2)
    group = unique("g")
    retry = {"base_delay_s": 0.05, "max_delay_s": 0.1, "max_attempts": 10_000}
    sends = [
        ChatEvent(
            event_id=f"00000000-0000-4000-8001-{chat:06d}{seq:06d}",
            portal=PORTAL,
            connector=CONNECTOR,
            line=LINE,
            chat_id=f"hand-{chat}",
            occurred_at=seq,
            payload=MessageSent(f"hand-{chat}-m{seq}", f"text {seq}"),
            sequence=seq,
            user=ExternalUser(id=f"u-{chat}"),
        )
        for chat in range(20)
        for seq in (1, 2, 3)
    ]
    sim.portal.update_faults({"error_rate": 1.0, "methods": [SEND]})
    first = make_settings(
        kafka_bootstrap, topic, group, sim, instance_id="a", retry=retry, shutdown_grace_s=0.5
    )
    with EngineThread(first) as a:
        produce(kafka_bootstrap, topic, sends, [ChatEventEncoder("single-object")])
        wait_until(
            lambda: (
                a.metrics.registry.get_sample_value(
                    "imconnector_events_consumed_total", {"topic": topic}
                )
                == len(sends)
            ),
            60,
            "every event consumed",
        )
        wait_until(lambda: any(r.error for r in sim.portal.call_records()), 30, "a failed send")
    waiting = _changelog(first, topic, 2)
    assert not [k for k in waiting if key_kind(k) == "body"], "no body record of its own per call"
    blocks = [v for k, v in waiting.items() if v is not None and key_kind(k) == "block"]
    held = {(chat, offset) for value in blocks for chat, offset, _ in decode_block(value)}
    assert len(held) == len(sends), "every waiting call's body is in a live block"
    assert len(blocks) < len(sends) / 2, "bodies share blocks"
    ghost = f"{PORTAL}|{CONNECTOR}|{LINE}|ghost"
    orphan = body_key(ghost, 999_999)
    orphan_block = block_key("ghost", 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    changelog = first.changelog_topic(topic)
    producer.produce(changelog, key=orphan, value=b"[]", partition=0)
    producer.produce(
        changelog, key=orphan_block, value=b'[["%b",7,[]]]' % ghost.encode(), partition=0
    )
    assert producer.flush(30) == 0

    sim.portal.update_faults({"error_rate": 0.0})
    second = make_settings(kafka_bootstrap, topic, group, sim, instance_id="b", retry=retry)
    with (
        EngineThread(second),
        OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes,
    ):
        ids = {e.event_id for e in sends}
        wait_until(lambda: outcomes.finished(ids), 120, "a committed outcome per event")
    seen = applied_call_list(sim)
    for chat in range(20):
        texts = [ident for _, ident in seen[f"hand-{chat}"]]
        assert texts == [f"hand-{chat}-m{seq}:text {seq}" for seq in (1, 2, 3)], chat
    done = _changelog(second, topic, 2)
    left = [k for k, v in done.items() if v is not None and key_kind(k) != "chat"]
    assert left == [], f"bodies of finished calls are still live: {left[:5]}"
    assert done[orphan] is None, "the orphan body record was deleted after the restore"
    assert done[orphan_block] is None, "the orphan block was deleted after the restore"
    heads = {k: v for k, v in done.items() if key_kind(k) == "chat"}
    assert len(heads) == 20 and all(v is not None and b'"o"' not in v for v in heads.values())


def test_a_few_long_waiting_calls_move_out_of_a_block_the_others_left(
    kafka_bootstrap, topic_factory, unique, sim, monkeypatch
):
    """The calls of one commit share a block of bodies. When most of them are done and a
    few wait (here sends fail while edits go through), the waiting ones are written into
    a block of their own and the old block is deleted: an outage of one portal must not
    keep the bodies of every call that shared a commit with its calls."""
    monkeypatch.setattr(store_module, "REHOME_AFTER_S", 0.0)
    topic = topic_factory(1)
    waiting = [f"wait-{n}" for n in range(5)]
    events = [
        chat_event(chat, 1, MessageSent(f"{chat}-m1", "hello"), user=ExternalUser(id="u"))
        for chat in waiting
    ] + [chat_event(f"edit-{n}", 1, MessageEdited(f"edit-{n}-m0", "changed")) for n in range(20)]
    # Produced before the service starts: one poll, one commit, one block for all of them.
    produce(kafka_bootstrap, topic, events, [ChatEventEncoder("single-object")])
    sim.portal.update_faults({"error_rate": 1.0, "methods": [SEND]})
    retry = {"base_delay_s": 0.05, "max_delay_s": 0.1, "max_attempts": 10_000}
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim, retry=retry)

    def bodies_in_live_blocks() -> set[str]:
        latest = _changelog(settings, topic, 1)
        return {
            chat.rsplit("|", 1)[1]
            for key, value in latest.items()
            if value is not None and key_kind(key) == "block"
            for chat, _, _ in decode_block(value)
        }

    with (
        EngineThread(settings),
        OutcomeWatcher(kafka_bootstrap, f"{topic}.outcomes") as outcomes,
    ):
        edits = {e.event_id for e in events if isinstance(e.payload, MessageEdited)}
        wait_until(lambda: outcomes.finished(edits), 60, "an outcome for every edit")
        wait_until(
            lambda: bodies_in_live_blocks() == set(waiting),
            60,
            "only the waiting sends' bodies left in live blocks",
        )
        assert not outcomes.finished({e.event_id for e in events[:5]}), "the sends still wait"
