"""The fold's rules, one by one (architecture §3 'decide', §4 send ledger, §5 parking)."""

from __future__ import annotations

import itertools

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
from consumer.core.ranges import RangeSet
from consumer.core.state import IN_FLIGHT, QUEUED, ChatState, PortalChat
from consumer.store.encoding import chat_doc, decode_chat, encode_body, encode_chat

CONFIG = FoldConfig(rename_wait_timeout_ms=10_000)


def _through_the_changelog(state: ChatState) -> ChatState:
    bodies = {call.offset: encode_body(call) for call in state.calls()}
    restored, missing = decode_chat(chat_doc(encode_chat(state)), bodies)
    assert not missing
    return restored


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
    assert state.failed == RangeSet([[1, 1]])


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
    assert state.failed == RangeSet([[1, 4]])
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
        restored = _through_the_changelog(state)
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
    assert state.watermark == 3 and state.gaps == RangeSet([[2, 2]])
    # The missing event turns up after all: it is late, not a duplicate.
    second = ev(MessageSent("m2", "b"), 2)
    assert [a for _, a in lane.offer(state, second, 70_000).ready] == ["late"]
    outcomes = on_late(state, new_call(second, state, ("t", 0, 9)))
    assert [(o.outcome, o.error_class, o.code) for o in outcomes] == [
        ("dead_lettered", "late", "SEQUENCE_GAP_EXPIRED")
    ]
    assert state.failed == RangeSet([[2, 2]])  # a redrive may apply it on purpose
    assert [a for _, a in lane.offer(state, first, 71_000).ready] == ["duplicate"]


def test_a_redrive_of_a_parked_chat_with_1500_dead_letters_applies_all_of_them():
    """Dead-lettered sequences are kept as ranges: no count forgets the oldest (1,000 did)."""
    from consumer.core.ordering import classify

    state = ChatState()
    for seq in range(1, 1502):
        feed(state, ev(MessageSent(f"m{seq}", "x"), seq))
        state.watermark = seq
    on_failure(state, state.outbox[0], "exhausted", "INTERNAL_SERVER_ERROR", "x", 1)
    assert state.parked and state.failed is not None and state.failed.count() == 1501
    assert state.failed == RangeSet([[1, 1501]])  # one range, however many
    admissions = {classify(state, ev(MessageSent(f"m{s}", "x"), s)) for s in range(1, 1502)}
    assert admissions == {"redrive"}


def test_more_than_16_gaps_in_one_chat_never_turn_a_late_event_into_a_duplicate():
    """A late event in the first of 20 gaps given up is still late (dead-lettered, and a
    redrive may apply it); with 16 gaps remembered it was a silent duplicate."""
    from consumer.core.ordering import Lane

    state = ChatState()
    lane: Lane[ChatEvent] = Lane(4, 16, lambda e: e)
    seq = 0
    for _ in range(20):  # every other sequence is missing; each gap is given up
        seq += 2
        lane.offer(state, ev(MessageSent(f"m{seq}", "x"), seq), seq)
        lane.expire(state, 10**9, 1, caught_up_ms=10**9)
    assert state.gaps is not None and len(state.gaps.ranges) == 20
    first_missing = ev(MessageSent("m1", "x"), 1)
    assert [a for _, a in lane.offer(state, first_missing, 10**9).ready] == ["late"]
    on_late(state, new_call(first_missing, state, ("t", 0, 99)))
    assert 1 in state.failed  # type: ignore[operator]


def test_a_successful_send_remembers_where_the_chat_lives_on_the_portal():
    state = ChatState()
    feed(state, ev(MessageSent("m1", "x"), 1))
    feed(state, ev(MessageSent("m2", "x"), 2))
    result = {"user": "101", "session_id": "301", "chat_id": "1701"}
    on_success(state, state.outbox[0], result, 1)
    assert state.portal == PortalChat(301, 1701, 101)
    # A message into a closed session is answered without `session`: the ids known stay.
    on_success(state, state.outbox[0], {"user": "101"}, 2)
    assert _through_the_changelog(state).portal == PortalChat(301, 1701, 101)


def test_a_send_answered_without_ids_leaves_the_portal_ids_unknown():
    state = ChatState()
    feed(state, ev(MessageSent("m1", "x"), 1))
    on_success(state, state.outbox[0], None, 1)
    assert state.portal is None and state.session
