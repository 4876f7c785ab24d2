"""What reaches the portal as the customer: one whole user block per chat, display fields
cleaned, never an empty update (issue 16 items 1, 2, 4, 7)."""

from __future__ import annotations

import itertools

import orjson
import pytest

from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    Payload,
    ReadConfirmed,
)
from consumer.core.fold import FoldConfig, Outcome, new_call, on_event, on_success
from consumer.core.mapping import (
    NAME_MAX,
    RENAME,
    clean_email,
    clean_name,
    element_for,
    user_block,
)
from consumer.core.state import ChatState, PendingCall
from consumer.settings import EngineSettings
from consumer.store.encoding import chat_doc, decode_chat, encode_body, encode_chat

FULL = ExternalUser(
    id="u1",
    name="Anna",
    last_name="Ivanova",
    picture_url="https://example.com/a.png",
    url="https://example.com/anna",
    gender="female",
    email="anna@example.com",
    phone="+4912345",
)
_ids = itertools.count(1)
_offsets = itertools.count()


def ev(payload: Payload, user: ExternalUser | None = FULL) -> ChatEvent:
    n = next(_ids)
    return ChatEvent(f"e{n}", "p", "c", 1, "chat", 1000 + n, payload, n, user)


def feed(state: ChatState, event: ChatEvent) -> tuple[PendingCall, list[Outcome]]:
    call = new_call(event, state, ("t", 0, next(_offsets)))
    return call, on_event(state, event, call, 0, FoldConfig())


def sent_user(state: ChatState, event: ChatEvent) -> dict[str, object]:
    call, outcomes = feed(state, event)
    assert outcomes == []
    user = call.element["user"]
    assert isinstance(user, dict)
    return user


def test_edits_and_deletes_without_user_carry_the_chats_whole_block() -> None:
    state = ChatState()
    first = sent_user(state, ev(MessageSent("m1", "hi")))
    assert first == {
        "id": "u1",
        "name": "Anna",
        "last_name": "Ivanova",
        "email": "anna@example.com",
        "url": "https://example.com/anna",
        "gender": "female",
        "phone": "+4912345",
        "picture": {"url": "https://example.com/a.png"},
    }
    for payload in (MessageEdited("m1", "hello"), MessageDeleted("m1"), MessageSent("m2", "x")):
        block = sent_user(state, ev(payload, user=None))
        # Same content and the same key order: the portal hashes the serialised block.
        assert list(block.items()) == list(first.items())


def test_an_id_only_user_of_the_same_customer_sends_the_known_block() -> None:
    state = ChatState()
    first = sent_user(state, ev(MessageSent("m1", "hi")))
    assert sent_user(state, ev(MessageEdited("m1", "x"), ExternalUser(id="u1"))) == first
    assert state.user == first


def test_a_changed_profile_sends_its_whole_new_block_and_is_kept() -> None:
    state = ChatState()
    sent_user(state, ev(MessageSent("m1", "hi")))
    renamed = ExternalUser(id="u1", name="Anya", email="anya@example.com")
    new = {"id": "u1", "name": "Anya", "email": "anya@example.com"}
    assert sent_user(state, ev(MessageSent("m2", "x"), renamed)) == new
    assert sent_user(state, ev(MessageDeleted("m2"), None)) == new


def test_a_rename_uses_the_known_customer_and_a_users_rename_updates_the_block() -> None:
    state = ChatState()
    feed(state, ev(MessageSent("m1", "hi")))
    on_success(state, state.outbox[0], None, 1)
    call, _ = feed(state, ev(ChatRenamed("VIP"), user=None))
    assert call.method == RENAME and call.element["USER_ID"] == "u1"
    other = ExternalUser(id="u2", name="Boris")
    call, _ = feed(state, ev(ChatRenamed("VIP 2"), other))
    assert call.element["USER_ID"] == "u2"
    assert state.user == {"id": "u2", "name": "Boris"}


def test_statuses_carry_no_user_block_but_their_user_is_remembered() -> None:
    state = ChatState()
    call, _ = feed(state, ev(DeliveryConfirmed(1, 2, ("x",)), ExternalUser(id="u9", name="Ida")))
    assert "user" not in call.element
    assert state.user == {"id": "u9", "name": "Ida"}


def test_the_block_survives_the_changelog_exactly_and_compactly() -> None:
    state = ChatState()
    sent = sent_user(state, ev(MessageSent("m1", "hi")))
    data = encode_chat(state)
    assert b'"name"' not in data  # positional, not a dict per chat record
    bodies = {call.offset: encode_body(call) for call in state.calls()}
    restored, missing = decode_chat(chat_doc(data), bodies)
    assert restored.user is not None and missing == []
    assert list(restored.user.items()) == list(sent.items())
    assert sent_user(restored, ev(MessageEdited("m1", "x"), None)) == sent


def test_changelogs_that_kept_only_the_user_id_are_still_read() -> None:
    legacy = orjson.dumps({"w": 3, "a": 0, "u": "u7"})
    state, _ = decode_chat(chat_doc(legacy), {})
    assert state.user == {"id": "u7"}
    call, _ = feed(state, ev(MessageDeleted("m1"), None))
    assert call.element["user"] == {"id": "u7"}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Anna", "Anna"),
        ("R2D2", "RD"),
        ("Анна-Мария", "Анна-Мария"),
        ("O\u2019Brien", "O'Brien"),
        ("Jose\u0301", "José"),
        ("王小明", "王小明"),
        ("Ann. 😀 Lee", "Ann Lee"),
        ("a" * 40, "a" * NAME_MAX),
        ("Jean Paul Sartre de la Something", "Jean Paul Sartre de la So"),
        ("123", None),
        ("  --  ", None),
        ("🙂", None),
    ],
)
def test_names_are_cleaned_to_what_the_docs_allow(raw: str, clean: str | None) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("anna@example.com", "anna@example.com"),
        (" anna@example.com ", "anna@example.com"),
        ("o'neil+tag@mail.example.org", "o'neil+tag@mail.example.org"),
        ("not an email", None),
        ("anna@localhost", None),
        ("anna@exa_mple.com", None),
        ("anna@@example.com", None),
    ],
)
def test_emails_the_portal_would_refuse_are_dropped(raw: str, clean: str | None) -> None:
    assert clean_email(raw) == clean


def test_cleaning_keeps_the_message_and_names_the_fields_it_changed() -> None:
    user = ExternalUser(id="r2", name="R2-D2 #1", last_name="🙂", email="nope")
    block, cleaned = user_block(user)
    assert block == {"id": "r2", "name": "R-D"}
    assert cleaned == ("name", "last_name", "email")
    state = ChatState()
    call, outcomes = feed(state, ev(MessageSent("m1", "beep"), user))
    assert outcomes == [] and state.outbox == [call]
    assert call.element["user"] == block and call.cleaned == cleaned
    assert user_block(FULL)[1] == ()


def test_element_for_accepts_a_known_block_or_a_bare_id() -> None:
    event = ev(MessageDeleted("m1"), None)
    assert element_for(event, {"id": "u1", "name": "Anna"})[1]["user"] == {
        "id": "u1",
        "name": "Anna",
    }
    assert element_for(event, "u1")[1]["user"] == {"id": "u1"}
    assert element_for(event, None)[1]["user"] == {"id": ""}


@pytest.mark.parametrize("payload", [MessageEdited("m1"), MessageEdited("m1", "")])
def test_an_edit_without_text_or_files_is_dead_lettered_and_the_chat_goes_on(
    payload: MessageEdited,
) -> None:
    state = ChatState()
    feed(state, ev(MessageSent("m1", "hi")))
    call, outcomes = feed(state, ev(payload))
    assert [(o.outcome, o.error_class, o.code) for o in outcomes] == [
        ("dead_lettered", "permanent", "EMPTY_UPDATE")
    ]
    assert call not in state.outbox and not state.parked
    later, outcomes = feed(state, ev(MessageEdited("m1", "0")))  # "0" is text
    assert outcomes == [] and state.outbox[-1] is later


def test_reading_confirmations_are_off_by_default() -> None:
    assert EngineSettings().send_status_reading is False
    state = ChatState()
    _, outcomes = feed(state, ev(ReadConfirmed(1, 2, ("x",))))
    assert [(o.outcome, o.code) for o in outcomes] == [("skipped", "READING_DISABLED")]
