"""One partition's store (`consumer.store.changelog`): what a commit writes, what a restore
reads back, idle chats, blocks and their parts."""

from __future__ import annotations

import itertools

from consumer.core.events import ChatEvent, ExternalUser, MessageSent
from consumer.core.fold import FoldConfig, new_call, on_event, on_success
from consumer.core.state import ChatState
from consumer.store.changelog import COMPACT_AFTER_MS, Dormant, PartitionStore
from consumer.store.encoding import encode_chat, key_kind

NOW = 1_764_000_000_000
DAY = 86_400_000
_offsets = itertools.count(10)


def send(store: PartitionStore, chat: str, text: str = "hi") -> None:
    """An event that leaves a send waiting in `chat`'s outbox."""
    state = store.get(chat)
    event = ChatEvent(
        f"e{next(_offsets)}",
        "p",
        "c",
        1,
        chat.rsplit("|", 1)[1],
        NOW,
        MessageSent("m", text),
        user=ExternalUser(id="u"),
    )
    on_event(state, event, new_call(event, state, ("t", 0, next(_offsets))), NOW, FoldConfig())
    store.dirty.add(chat)


def finish(store: PartitionStore, chat: str) -> None:
    state = store.get(chat)
    while state.outbox:
        on_success(state, state.outbox[0], None, NOW)
    store.dirty.add(chat)


def restored(records: list[tuple[bytes, bytes | None]]) -> PartitionStore:
    store = PartitionStore("reader")
    for key, value in records:
        store.load(key, value)
    store.finish_load()
    return store


def test_waiting_calls_survive_a_restore_and_finished_ones_leave_no_body():
    store = PartitionStore("w1")
    for n in range(5):
        send(store, f"p|c|1|chat{n}")
    first, chats = store.changes()
    assert sorted(chats) == [f"p|c|1|chat{n}" for n in range(5)]
    kinds = [key_kind(k) for k, _ in first]
    assert kinds.count("block") == 1 and kinds.count("chat") == 5  # bodies share a block
    back = restored(first)
    assert {c: len(back.get(c).outbox) for c in chats} == dict.fromkeys(chats, 1)
    for n in range(5):
        finish(store, f"p|c|1|chat{n}")
    second, _ = store.changes()
    block = next(k for k, _ in first if key_kind(k) == "block")
    assert (block, None) in second, "the block goes with its last call"
    final = restored(first + second)
    assert all(not final.get(c).outbox for c in chats)


def test_a_body_larger_than_a_record_is_written_in_parts_and_restored():
    store = PartitionStore("w2", record_limit=4_000)
    send(store, "p|c|1|big", "x" * 20_000)
    records, _ = store.changes()
    assert all(len(v or b"") <= 4_000 for _, v in records)
    assert sum(key_kind(k) == "part" for k, _ in records) >= 5
    back = restored(records)
    assert back.get("p|c|1|big").outbox[0].element["message"]["text"] == "x" * 20_000
    finish(store, "p|c|1|big")
    gone, _ = store.changes()
    deleted = {k for k, v in gone if v is None}
    assert {k for k, _ in records if key_kind(k) in ("part", "block")} <= deleted


def test_a_missing_body_is_reported_and_the_chat_goes_on_without_it():
    store = PartitionStore("w3")
    send(store, "p|c|1|a")
    records, _ = store.changes()
    without_block = [(k, v) for k, v in records if key_kind(k) != "block"]
    back = PartitionStore("reader")
    for key, value in without_block:
        back.load(key, value)
    result = back.finish_load()
    assert [chat for chat, _ in result.missing] == ["p|c|1|a"]
    assert back.get("p|c|1|a").outbox == []
    assert back.has_changes, "the chat's record is written again without the call"


def test_idle_chats_become_dormant_then_expire_whatever_their_fields_hold():
    store = PartitionStore("w4")
    old = NOW - COMPACT_AFTER_MS - 1
    store.chats = {
        "p|c|1|idle": ChatState(watermark=7, session=True, last_activity_ms=old),
        "p|c|1|o-user": ChatState(user_id="o", last_activity_ms=old),
        "p|c|1|recent": ChatState(watermark=3, last_activity_ms=NOW - 1_000),
        "p|c|1|in-use": ChatState(watermark=2, last_activity_ms=old),
        "p|c|1|by-id": ChatState(recent_ids=["e1"], last_activity_ms=old),
    }
    assert store.sweep(NOW, 7 * DAY, busy=lambda chat: chat == "p|c|1|in-use") == 2
    assert isinstance(store.chats["p|c|1|idle"], Dormant)
    assert isinstance(store.chats["p|c|1|o-user"], Dormant)
    assert store.chats["p|c|1|idle"].record == encode_chat(  # type: ignore[union-attr]
        ChatState(watermark=7, session=True, last_activity_ms=old)
    )
    kept = {c for c, v in store.chats.items() if isinstance(v, ChatState)}
    assert kept == {"p|c|1|recent", "p|c|1|in-use", "p|c|1|by-id"}
    assert store.get("p|c|1|idle") == ChatState(watermark=7, session=True, last_activity_ms=old)
    # A week later every idle chat expires: tombstones, the "o" user's included.
    store.sweep(NOW + 8 * DAY, 7 * DAY, busy=lambda chat: False)
    assert "p|c|1|o-user" not in store.chats and "p|c|1|idle" not in store.chats
    records, _ = store.changes()
    assert (b"p|c|1|o-user", None) in records


def test_restored_idle_chats_are_dormant_and_waiting_ones_decoded():
    store = PartitionStore("w5")
    send(store, "p|c|1|waiting")
    store.get("p|c|1|idle").watermark = 4
    store.dirty.add("p|c|1|idle")
    records, _ = store.changes()
    back = PartitionStore("reader")
    for key, value in records:
        back.load(key, value)
    result = back.finish_load()
    assert result.waiting == ["p|c|1|waiting"]
    assert isinstance(back.chats["p|c|1|idle"], Dormant)
    assert isinstance(back.chats["p|c|1|waiting"], ChatState)


def test_an_aborted_commit_writes_the_chats_and_their_bodies_again():
    store = PartitionStore("w6")
    send(store, "p|c|1|a")
    _lost, chats = store.changes()
    store.rewrite(chats)
    again, _ = store.changes()
    back = restored(again)  # only the second commit landed
    assert len(back.get("p|c|1|a").outbox) == 1
