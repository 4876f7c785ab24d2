"""The fold's rules, one by one (architecture §3 'decide', §4 send ledger, §5 parking)."""

from __future__ import annotations

import itertools

import orjson
import pytest

from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    ExternalUser,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    ReadConfirmed,
)
from consumer.core.fold import (
    FoldConfig,
    new_call,
    on_event,
    on_failure,
    on_late,
    on_restore,
    on_success,
    on_tick,
)
from consumer.core.mapping import DELETE, RENAME, SEND, UPDATE
from consumer.core.state import (
    IN_FLIGHT,
    QUEUED,
    ChatState,
    MissingCallBody,
    block_key,
    body_key,
    decode_block,
    encode_block,
    is_block_key,
    parse_body_key,
)

CONFIG = FoldConfig(rename_wait_timeout_ms=10_000)
_ids = itertools.count(1)


def ev(payload, seq=None, at=1000, user="u1") -> ChatEvent:
    return ChatEvent(
        event_id=f"e{next(_ids)}",
        portal="p",
        connector="c",
        line=1,
        chat_id="chat",
        occurred_at=at,
        payload=payload,
        sequence=seq,
        user=ExternalUser(id=user, name="Ann") if user else None,
    )


_OFFSETS = itertools.count()


def feed(state: ChatState, event: ChatEvent, now: int = 0, **kw):
    """Apply `event` as the engine does; each call gets its own source offset (its id)."""
    call = new_call(event, state, ("t", 0, next(_OFFSETS)))
    return on_event(state, event, call, now, CONFIG, **kw)


def test_rename_before_first_send_is_held_then_released_after_the_send():
    state = ChatState()
    assert feed(state, ev(ChatRenamed("VIP"), 1)) == []
    assert state.held_rename is not None and state.outbox == []
    feed(state, ev(MessageSent("m1", "hi"), 2))
    assert [c.method for c in state.outbox] == [SEND]
    on_success(state, state.outbox[0], {"session_id": "7"}, 5)
    assert state.session and state.held_rename is None
    assert [c.method for c in state.outbox] == [RENAME]
    assert state.outbox[0].element == {"CHAT_ID": "chat", "NAME": "VIP", "USER_ID": "u1"}


def test_rename_behind_a_queued_send_goes_out_after_it():
    state = ChatState()
    feed(state, ev(MessageSent("m1", "hi"), 1))
    feed(state, ev(ChatRenamed("VIP"), 2))
    assert [c.method for c in state.outbox] == [SEND, RENAME]


def test_newer_held_rename_supersedes_older():
    state = ChatState()
    feed(state, ev(ChatRenamed("old"), 1))
    outcomes = feed(state, ev(ChatRenamed("new"), 2))
    assert [o.outcome for o in outcomes] == ["superseded"]
    assert outcomes[0].call.element["NAME"] == "old"
    assert state.held_rename.element["NAME"] == "new"


def test_late_older_rename_without_sequence_is_superseded():
    state = ChatState(session=True)
    feed(state, ev(ChatRenamed("new"), at=2000))
    outcomes = feed(state, ev(ChatRenamed("old"), at=1000))
    assert [o.outcome for o in outcomes] == ["superseded"]


def test_held_rename_times_out_into_a_causal_wait_dead_letter():
    state = ChatState()
    feed(state, ev(ChatRenamed("VIP"), 1), now=0)
    assert on_tick(state, 9_999, CONFIG) == []
    outcomes = on_tick(state, 10_000, CONFIG)
    assert [(o.outcome, o.error_class, o.code) for o in outcomes] == [
        ("dead_lettered", "causal_wait", "CHAT_RENAMING_FAILED")
    ]
    assert state.failed == [1]


def test_renaming_failed_on_the_portal_holds_the_rename():
    state = ChatState(session=True)
    feed(state, ev(ChatRenamed("VIP"), 1))
    call = state.outbox[0]
    assert on_failure(state, call, "causal_wait", "CHAT_RENAMING_FAILED", "x", 1) == []
    assert state.held_rename is call and not state.session


def test_edit_or_delete_after_delete_is_moot():
    state = ChatState(session=True)
    feed(state, ev(MessageDeleted("m1"), 1))
    assert [o.outcome for o in feed(state, ev(MessageEdited("m1", "x"), 2))] == ["moot"]
    assert [o.outcome for o in feed(state, ev(MessageDeleted("m1"), 3))] == ["moot"]
    assert [c.method for c in state.outbox] == [DELETE]
    feed(state, ev(MessageEdited("m2", "y"), 4))
    assert [c.method for c in state.outbox] == [DELETE, UPDATE]


def test_reading_status_can_be_disabled():
    state = ChatState()
    outcomes = on_event(
        state,
        e := ev(ReadConfirmed(1, 2, ("x",)), 1),
        new_call(e, state, ("t", 0, 0)),
        0,
        FoldConfig(send_status_reading=False),
    )
    assert [o.outcome for o in outcomes] == ["skipped"] and not state.outbox


def test_exhausted_retries_park_the_chat_and_dead_letter_later_events_in_order():
    state = ChatState()
    for seq in (1, 2, 3):
        feed(state, ev(MessageSent(f"m{seq}", "x"), seq))
    head = state.outbox[0]
    outcomes = on_failure(state, head, "exhausted", "INTERNAL_SERVER_ERROR", "5xx", 10)
    assert [(o.error_class, o.call.seq) for o in outcomes] == [
        ("exhausted", 1),
        ("parked", 2),
        ("parked", 3),
    ]
    assert state.parked and state.outbox == []
    later = feed(state, ev(MessageSent("m4", "x"), 4))
    assert [(o.error_class, o.code) for o in later] == [("parked", "CHAT_PARKED")]
    assert state.failed == [1, 2, 3, 4]
    # A redriven event unparks the chat and is applied.
    assert feed(state, ev(MessageSent("m1", "x"), 1), redrive=True) == []
    assert not state.parked and [c.seq for c in state.outbox] == [1]


def test_permanent_failure_dead_letters_only_that_event():
    state = ChatState()
    feed(state, ev(MessageSent("m1", "x"), 1))
    feed(state, ev(MessageSent("m2", "x"), 2))
    outcomes = on_failure(state, state.outbox[0], "permanent", "NOT_ACTIVE_LINE", "x", 1, 400)
    assert [(o.outcome, o.http_status) for o in outcomes] == [("dead_lettered", 400)]
    assert [c.seq for c in state.outbox] == [2] and not state.parked


def test_in_flight_send_after_restart_follows_the_unknown_outcome_policy():
    for policy, expected in (("resend", "ambiguous_resent"), ("dead-letter", "dead_lettered")):
        state = ChatState()
        feed(state, ev(MessageSent("m1", "x"), 1))
        state.outbox[0].status = IN_FLIGHT
        restored = ChatState.from_bytes(state.to_bytes(), state.bodies())
        outcomes = on_restore(restored, policy)
        assert [o.outcome for o in outcomes] == [expected]
        if policy == "resend":
            assert restored.outbox[0].status == QUEUED
        else:
            assert restored.outbox == [] and outcomes[0].error_class == "ambiguous"


def test_in_flight_idempotent_call_is_always_resent():
    state = ChatState(session=True)
    feed(state, ev(MessageEdited("m1", "x"), 1))
    state.outbox[0].status = IN_FLIGHT
    outcomes = on_restore(state, "dead-letter")
    assert [o.outcome for o in outcomes] == ["ambiguous_resent"]
    assert state.outbox[0].status == QUEUED


def test_state_round_trips_through_the_changelog_codec():
    state = ChatState(session=True)
    feed(state, ev(ChatRenamed("VIP"), 1))
    feed(state, ev(MessageSent("m1", "x"), 2))
    feed(state, ev(MessageDeleted("m0"), 3))
    state.failed = [7]
    again = ChatState.from_bytes(state.to_bytes(), state.bodies())
    assert again.to_bytes() == state.to_bytes()
    assert again.outbox[0].element == state.outbox[0].element
    assert again.deleted == ["m0"] and again.watermark == 0


def test_a_calls_changing_fields_reach_the_changelog_after_it_was_encoded_once():
    """Each call's encoding is reused while its status and counters stay the same, and
    made again when one changes (a stale in-flight mark would break the send ledger)."""
    state = ChatState(session=True)
    feed(state, ev(MessageSent("m1", "x", files=()), 2))
    call = state.outbox[0]
    call.raw, call.raw_key, call.headers = b"\x01\xff", b"k", (("h", b"\x00v"),)
    first = ChatState.from_bytes(state.to_bytes(), state.bodies()).outbox[0]
    assert (first.status, first.attempts, first.raw, first.headers) == (
        QUEUED,
        0,
        b"\x01\xff",
        (("h", b"\x00v"),),
    )
    assert (
        ChatState.from_bytes(state.to_bytes(), state.bodies()).outbox[0].status == QUEUED
    )  # reused
    call.status, call.attempts, call.first_failure_ms = IN_FLIGHT, 2, 123
    call.held_since_ms, call.redrive_count = 45, 1
    again = ChatState.from_bytes(state.to_bytes(), state.bodies()).outbox[0]
    assert (
        again.status,
        again.attempts,
        again.first_failure_ms,
        again.held_since_ms,
        again.redrive_count,
    ) == (IN_FLIGHT, 2, 123, 45, 1)
    assert (again.event_id, again.element, again.raw_key) == (call.event_id, call.element, b"k")


def test_a_gap_is_given_up_only_after_the_partition_was_read_to_its_end():
    from consumer.core.ordering import Lane

    state = ChatState()
    lane: Lane[ChatEvent] = Lane(16, 16, lambda e: e)
    first, third = ev(MessageSent("m1", "a"), 1), ev(MessageSent("m3", "c"), 3)
    assert [a for _, a in lane.offer(state, first, 0).ready] == ["new"]
    held = lane.offer(state, third, 1_000)
    assert held.held == [third] and not held.ready
    # The timeout passed, but the partition was last read to its end before the gap
    # opened: the missing event may be in the unread backlog, so keep waiting.
    assert not lane.expire(state, 60_000, 30_000, caught_up_ms=500).gaps
    given_up = lane.expire(state, 60_000, 30_000, caught_up_ms=2_000)
    assert given_up.gaps == [(2, 2)] and [i for i, _ in given_up.ready] == [third]
    assert state.watermark == 3 and state.gaps == [[2, 2]]
    # The missing event turns up after all: it is late, not a duplicate.
    second = ev(MessageSent("m2", "b"), 2)
    assert [a for _, a in lane.offer(state, second, 70_000).ready] == ["late"]
    outcomes = on_late(state, new_call(second, state, ("t", 0, 9)))
    assert [(o.outcome, o.error_class, o.code) for o in outcomes] == [
        ("dead_lettered", "late", "SEQUENCE_GAP_EXPIRED")
    ]
    assert state.failed == [2]  # a redrive may apply it on purpose
    assert [a for _, a in lane.offer(state, first, 71_000).ready] == ["duplicate"]


def test_a_chats_record_refers_to_its_calls_and_stays_small_however_long_the_outbox():
    """Bodies are records of their own: a change to a chat with 200 waiting calls writes
    a record of about 20 bytes per call, not the calls' elements and original records."""
    state = ChatState(session=True)
    for seq in range(1, 201):
        feed(state, ev(MessageSent(f"m{seq}", "a fairly long message text " * 4), seq))
    for call in state.outbox:
        call.raw = b"\x00" * 300
    record = state.to_bytes()
    assert len(record) < 25 * len(state.outbox) + 100
    assert b"fairly long" not in record
    assert len(state.bodies()) == 200 and all(b"fairly long" in b for b in state.bodies().values())


def test_a_missing_body_is_named_and_an_old_inline_record_still_reads():
    state = ChatState(session=True)
    feed(state, ev(MessageSent("m1", "x"), 1))
    call = state.outbox[0]
    with pytest.raises(MissingCallBody, match=f"offset {call.offset}"):
        ChatState.from_bytes(state.to_bytes(), {})
    # Before bodies had records of their own, the whole call was inline (15 fields).
    inline = [*orjson.loads(call.body()), IN_FLIGHT, 2, 5, 0, 1]
    old = ChatState.from_bytes(orjson.dumps({"w": 1, "a": 0, "s": 1, "o": [inline]}))
    assert (old.outbox[0].element, old.outbox[0].status, old.outbox[0].attempts) == (
        call.element,
        IN_FLIGHT,
        2,
    )


@pytest.mark.parametrize("chat", ["p|c|1|42", "p|c|1|\x00\xff9", "p|c|1|чат 7", "p|c|1|a\x001"])
def test_body_keys_never_read_as_a_chats_key_and_back(chat):
    assert parse_body_key(chat.encode()) is None
    assert parse_body_key(body_key(chat, 1234)) == (chat, 1234)
    assert not is_block_key(chat.encode()) and not is_block_key(body_key(chat, 1234))
    assert is_block_key(block_key("3f2a9c", 7)) and parse_body_key(block_key("3f2a9c", 7)) is None


def test_calls_of_several_chats_restore_from_one_block_and_from_old_body_records():
    """A commit writes the new calls of a partition's chats into one block record; a chat
    restores from its block entries as from body records of their own (older changelogs)."""
    first, second = ChatState(session=True), ChatState(session=True)
    for seq in (1, 2):
        feed(first, ev(MessageSent(f"a{seq}", "x"), seq))
    feed(second, ev(MessageEdited("b1", "y"), 1))
    second.outbox[0].origin = ("t", 0, 77)  # calls of one partition have distinct offsets
    items = [("p|c|1|a", call) for call in first.outbox] + [("p|c|1|b", second.outbox[0])]
    block = decode_block(encode_block(items))
    assert [(chat, offset) for chat, offset, _ in block] == [
        (chat, call.offset) for chat, call in items
    ]
    bodies = {chat: {} for chat, _, _ in block}
    for chat, offset, body in block:
        bodies[chat][offset] = body
    for chat, state in (("p|c|1|a", first), ("p|c|1|b", second)):
        restored = ChatState.from_bytes(state.to_bytes(), bodies[chat])
        assert restored.to_bytes() == state.to_bytes()
        assert [c.element for c in restored.outbox] == [c.element for c in state.outbox]
        assert [c.raw for c in restored.outbox] == [c.raw for c in state.outbox]
    mixed = {
        first.outbox[0].offset: first.outbox[0].body(),
        **{
            offset: body
            for offset, body in bodies["p|c|1|a"].items()
            if offset != first.outbox[0].offset
        },
    }
    assert ChatState.from_bytes(first.to_bytes(), mixed).to_bytes() == first.to_bytes()
