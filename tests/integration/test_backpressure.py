"""Backpressure against the real broker: a partition whose calls pile up pauses and
resumes, and events held for a sequence gap never keep it paused (architecture §3).

Both tests pre-produce their records before the engine starts, so its first read
(`consume` takes at most 2,000 records) ends long before the events the held ones wait
for: the pause happens with those events still unread.
"""

from __future__ import annotations

import pytest

from consumer.codec import ChatEventEncoder
from consumer.core.events import ChatEvent, ChatRenamed, MessageSent
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    EngineThread,
    applied_call_list,
    chat_event,
    make_settings,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka
ENCODER = [ChatEventEncoder("single-object")]
FIRST_READ = 2_000  # the most records one `consume` returns (Engine._iteration)


@pytest.fixture
def sim():
    server = SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False, seed=1)
    ).start()
    yield server
    server.stop()


def send(chat: str, seq: int) -> ChatEvent:
    return chat_event(chat, seq, MessageSent(f"{chat}-m{seq}", f"text {seq}"))


def gapped_workload(prefix: str, held: int) -> tuple[list[ChatEvent], list[str], int]:
    """`held` chats whose second event comes first, then enough one-event chats to pile
    up calls past the first read, then the held chats' first events."""
    waiting = [f"{prefix}-h{i}" for i in range(held)]
    filler = [send(f"{prefix}-f{i}", 1) for i in range(FIRST_READ)]
    events = [send(chat, 2) for chat in waiting] + filler + [send(chat, 1) for chat in waiting]
    return events, waiting, len(filler)


def pre_produced(bootstrap, topic_factory, unique, sim, events, **engine):
    """Settings (with `engine` overrides) for an engine on a fresh one-partition topic
    that holds `events` before any engine starts."""
    topic = topic_factory(1)
    settings = make_settings(bootstrap, topic, unique("g"), sim, engine=engine)
    produce(bootstrap, topic, events, ENCODER)
    return settings


def pauses(running: EngineThread) -> float:
    return running.metrics.registry.get_sample_value("imconnector_partition_pauses_total") or 0.0


def gaps(running: EngineThread, reason: str) -> float:
    return (
        running.metrics.registry.get_sample_value(
            "imconnector_sequence_gaps_total", {"reason": reason}
        )
        or 0.0
    )


def test_events_held_for_a_gap_never_keep_a_paused_partition_paused(
    kafka_bootstrap, topic_factory, unique, sim
):
    # 95 held events are above the resume mark (half of 100) but below the buffers'
    # room: counted as load, they kept the partition paused after its calls drained,
    # and the events they wait for were never read.
    events, waiting, filler = gapped_workload("bp", 95)
    settings = pre_produced(
        kafka_bootstrap, topic_factory, unique, sim, events, max_buffered_events=100
    )
    with EngineThread(settings) as running:
        wait_until(
            lambda: running.outcome("applied") >= len(events),
            120,
            "every event applied (a paused partition read on)",
        )
        assert pauses(running) >= 1  # the calls did pile up
        assert sum(gaps(running, r) for r in ("timeout", "chat_buffer_full", "buffers_full")) == 0
        assert running.outcome("dead_lettered") == 0
    applied = applied_call_list(sim)
    for chat in waiting:
        assert [ident for _, ident in applied[chat]] == [
            f"{chat}-m1:text 1",
            f"{chat}-m2:text 2",
        ], chat
    assert sum(1 for chat in applied if chat.startswith("bp-f")) == filler


def test_full_reorder_buffers_give_up_the_oldest_gaps_and_dead_letter_late_events(
    kafka_bootstrap, topic_factory, unique, sim
):
    # 150 held events against room for 100: once 100 wait, the gaps open longest are
    # given up until 75 wait, so between 51 (the last read brought the count from 99 to
    # 150) and 75 chats move on without their first event, which is dead-lettered when
    # it comes. The others wait and apply in order.
    events, waiting, _ = gapped_workload("full", 150)
    settings = pre_produced(
        kafka_bootstrap, topic_factory, unique, sim, events, max_buffered_events=100
    )
    with EngineThread(settings) as running:
        wait_until(
            lambda: running.outcomes_total() >= len(events),
            120,
            "an outcome for every event",
        )
        given_up = gaps(running, "buffers_full")
        assert 51 <= given_up <= 75, given_up
        assert gaps(running, "timeout") == 0
        assert running.outcome("dead_lettered") == given_up
        assert running.outcome("applied") == len(events) - given_up
    applied = applied_call_list(sim)
    moved_on = []
    for chat in waiting:
        idents = [ident for _, ident in applied[chat]]
        if idents == [f"{chat}-m2:text 2"]:
            moved_on.append(chat)
        else:
            assert idents == [f"{chat}-m1:text 1", f"{chat}-m2:text 2"], chat
    assert len(moved_on) == given_up
    dlq = settings.dlq_topic(settings.source_topics[0])
    dead = read_all(kafka_bootstrap, dlq, expect=int(given_up))
    late = {
        (dict(msg.headers() or ())["imconnector.error.code"], msg.key().decode()) for msg in dead
    }
    assert {code for code, _ in late} == {b"SEQUENCE_GAP_EXPIRED"}
    assert {key.rsplit("|", 1)[-1] for _, key in late} == set(moved_on)


def test_renames_held_for_their_first_send_never_keep_a_paused_partition_paused(
    kafka_bootstrap, topic_factory, unique, sim
):
    # A rename waits for its chat's first send, which comes after the first read: the
    # 95 held renames kept the partition paused (as pending calls) for the rename
    # timeout, an hour by default.
    renamed = [f"rn-{i}" for i in range(95)]
    events = (
        [chat_event(chat, 1, ChatRenamed(f"name of {chat}")) for chat in renamed]
        + [send(f"rn-f{i}", 1) for i in range(FIRST_READ)]
        + [send(chat, 2) for chat in renamed]
    )
    settings = pre_produced(
        kafka_bootstrap, topic_factory, unique, sim, events, max_buffered_events=100
    )
    with EngineThread(settings) as running:
        wait_until(
            lambda: running.outcome("applied") >= len(events),
            120,
            "every send and rename applied (a paused partition read on)",
        )
        assert pauses(running) >= 1
        assert running.outcome("dead_lettered") == 0
    applied = applied_call_list(sim)
    for chat in renamed:
        assert applied[chat] == [
            ("imconnector.send.messages", f"{chat}-m2:text 2"),
            ("imconnector.chat.name.set", f"name of {chat}"),
        ], chat


def test_one_chat_whose_calls_pile_up_pauses_its_partition_until_they_drain(
    kafka_bootstrap, topic_factory, unique, sim
):
    # The partition's share of max_buffered_events (10,000) is never reached: only the
    # one chat's 300 waiting calls against max_buffered_per_chat 20 pause it.
    events = [send("hot", seq) for seq in range(1, 301)]
    settings = pre_produced(
        kafka_bootstrap, topic_factory, unique, sim, events, max_buffered_per_chat=20
    )
    with EngineThread(settings) as running:
        wait_until(lambda: running.outcome("applied") >= len(events), 120, "the hot chat")
        assert pauses(running) >= 1
    assert [ident for _, ident in applied_call_list(sim)["hot"]] == [
        f"hot-m{seq}:text {seq}" for seq in range(1, 301)
    ]
