"""The changelog encoding (`consumer.store.encoding`): chats, call bodies, blocks and parts,
and the older forms it still reads."""

from __future__ import annotations

import itertools

import orjson
import pytest

from consumer.core.events import ChatEvent, ChatRenamed, ExternalUser, MessageDeleted, MessageSent
from consumer.core.fold import FoldConfig, new_call, on_event
from consumer.core.ranges import RangeSet
from consumer.core.state import IN_FLIGHT, QUEUED, ChatState, PortalChat
from consumer.store.encoding import (
    block_key,
    block_of_part,
    body_key,
    chat_doc,
    decode_block,
    decode_chat,
    encode_block,
    encode_body,
    encode_chat,
    is_idle_doc,
    key_kind,
    parse_body_key,
    part_key,
    parts_of,
    split_block,
)

_ids = itertools.count(1)


def ev(payload, seq) -> ChatEvent:
    return ChatEvent(
        event_id=f"e{next(_ids)}",
        portal="p",
        connector="c",
        line=1,
        chat_id="chat",
        occurred_at=1000,
        payload=payload,
        sequence=seq,
        user=ExternalUser(id="u1", name="Ann"),
    )


def feed(state: ChatState, event: ChatEvent, offset: int | None = None) -> None:
    origin = ("t", 0, event.sequence if offset is None else offset)
    on_event(state, event, new_call(event, state, origin), 1, FoldConfig())


def bodies(state: ChatState) -> dict[int, bytes]:
    return {call.offset: encode_body(call) for call in state.calls()}


def restore(state: ChatState) -> ChatState:
    restored, missing = decode_chat(chat_doc(encode_chat(state)), bodies(state))
    assert missing == []
    return restored


def test_a_state_round_trips():
    state = ChatState(session=True, last_offset=41)
    feed(state, ev(ChatRenamed("VIP"), 1))
    feed(state, ev(MessageSent("m1", "x"), 2))
    feed(state, ev(MessageDeleted("m0"), 3))
    state.failed = RangeSet([[7, 9]])
    state.gaps = RangeSet([[4, 4]])
    again = restore(state)
    assert encode_chat(again) == encode_chat(state)
    assert again.outbox[0].element == state.outbox[0].element
    assert (again.deleted, again.last_offset, again.failed, again.gaps) == (
        ["m0"],
        41,
        RangeSet([[7, 9]]),
        RangeSet([[4, 4]]),
    )


def test_a_calls_changing_fields_and_raw_bytes_reach_the_record_and_body():
    state = ChatState(session=True)
    feed(state, ev(MessageSent("m1", "x"), 2))
    call = state.outbox[0]
    call.raw, call.raw_key, call.headers = b"\x01\xff", b"k", (("h", b"\x00v"),)
    first = restore(state).outbox[0]
    assert (first.status, first.raw, first.headers) == (QUEUED, b"\x01\xff", (("h", b"\x00v"),))
    call.status, call.attempts, call.first_failure_ms = IN_FLIGHT, 2, 123
    call.held_since_ms, call.redrive_count = 45, 1
    again = restore(state).outbox[0]
    assert (
        again.status,
        again.attempts,
        again.first_failure_ms,
        again.held_since_ms,
        again.redrive_count,
    ) == (IN_FLIGHT, 2, 123, 45, 1)


def test_a_chats_record_refers_to_its_calls_and_stays_small_however_long_the_outbox():
    state = ChatState(session=True)
    for seq in range(1, 201):
        feed(state, ev(MessageSent(f"m{seq}", "a fairly long message text " * 4), seq))
    record = encode_chat(state)
    assert len(record) < 25 * len(state.outbox) + 100
    assert b"fairly long" not in record


def test_a_missing_body_leaves_the_call_out_and_names_it():
    state = ChatState(session=True)
    feed(state, ev(MessageSent("m1", "x"), 1))
    feed(state, ev(MessageSent("m2", "y"), 2))
    only_second = {2: encode_body(state.outbox[1])}
    restored, missing = decode_chat(chat_doc(encode_chat(state)), only_second)
    assert missing == [1]
    assert [c.offset for c in restored.outbox] == [2]


def test_records_of_earlier_versions_still_read():
    state = ChatState(session=True)
    feed(state, ev(MessageSent("m1", "x"), 1))
    call = state.outbox[0]
    # The whole call inline (15 fields), and dead-lettered sequences as a plain list.
    inline = [*orjson.loads(encode_body(call)), IN_FLIGHT, 2, 5, 0, 1]
    doc = {"w": 1, "a": 0, "s": 1, "o": [inline], "f": [3, 4, 9], "g": [[5, 6]]}
    old, missing = decode_chat(doc, {})
    assert missing == []
    assert (old.outbox[0].element, old.outbox[0].status, old.outbox[0].attempts) == (
        call.element,
        IN_FLIGHT,
        2,
    )
    assert old.failed == RangeSet([[3, 4], [9, 9]]) and old.gaps == RangeSet([[5, 6]])


def test_idleness_is_read_from_the_fields_not_from_the_bytes():
    """A chat whose user id is "o" (or "h", or "p") is idle like any other."""
    for user in ("o", "h", "p", '"o"'):
        doc = chat_doc(encode_chat(ChatState(user={"id": user}, watermark=3)))
        assert is_idle_doc(doc), user
    busy = ChatState()
    feed(busy, ev(MessageSent("m1", "x"), 1))
    assert not is_idle_doc(chat_doc(encode_chat(busy)))
    assert not is_idle_doc(chat_doc(encode_chat(ChatState(parked=True))))


@pytest.mark.parametrize("chat", ["p|c|1|42", "p|c|1|\x00\xff9", "p|c|1|чат 7", "p|c|1|a\x001"])
def test_keys_of_each_kind_never_read_as_another(chat):
    assert key_kind(chat.encode()) == "chat"
    assert key_kind(body_key(chat, 1234)) == "body"
    assert parse_body_key(body_key(chat, 1234)) == (chat, 1234)
    block = block_key("3f2a9c", 7)
    assert key_kind(block) == "block" and key_kind(part_key(block, 2)) == "part"
    assert block_of_part(part_key(block, 2)) == block


def test_a_block_too_large_for_one_record_is_stored_in_parts():
    state = ChatState(session=True)
    feed(state, ev(MessageSent("m1", "x" * 5000), 1))
    value = encode_block([("p|c|1|a", 1, encode_body(state.outbox[0]))])
    key = block_key("w", 1)
    assert split_block(key, value, len(value)) == [(key, value)]
    records = split_block(key, value, 1000)
    assert [k for k, _ in records[:-1]] == [part_key(key, i) for i in range(len(records) - 1)]
    assert all(len(v) <= 1000 for _, v in records)
    manifest = records[-1]
    assert manifest[0] == key and parts_of(manifest[1]) == len(records) - 1
    assert b"".join(v for _, v in records[:-1]) == value
    assert parts_of(value) is None
    assert decode_block(value)[0][:2] == ("p|c|1|a", 1)


def test_where_the_chat_lives_on_the_portal_round_trips_compactly():
    state = ChatState(session=True, portal=PortalChat(301, 1701, 101))
    doc = chat_doc(encode_chat(state))
    assert doc["b"] == [301, 1701, 101]
    assert restore(state).portal == PortalChat(301, 1701, 101)


def test_a_record_written_before_the_portal_ids_were_kept_reads_without_them():
    older = orjson.dumps({"w": 3, "a": 1, "s": 1, "U": ["u1", "Ann"]})
    state, missing = decode_chat(chat_doc(older), {})
    assert missing == [] and state.portal is None and state.session
    assert "b" not in chat_doc(encode_chat(state))
