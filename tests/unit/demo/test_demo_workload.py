"""The demo's traffic is what real producers send: one customer per chat, forbidden names,
and a user block on new messages only."""

from __future__ import annotations

import random

from consumer.core.events import ExternalUser
from consumer.core.mapping import clean_name
from consumer.demo.workload import WILD_NAMES, chat_script


def test_only_new_messages_carry_the_given_customer() -> None:
    user = ExternalUser("u-7", name="R2D2", last_name="Droid")
    events = chat_script(
        random.Random(3), "p", "c", 1, "chat", 40, user=user, user_on_sends_only=True
    )
    kinds = {event.kind for event in events}
    assert {"MessageSent", "MessageEdited", "ChatRenamed"} <= kinds
    for event in events:
        assert event.user == (user if event.kind == "MessageSent" else None), event.kind


def test_by_default_every_event_carries_its_customer() -> None:
    events = chat_script(random.Random(3), "p", "c", 1, "chat", 20)
    assert all(event.user is not None and event.user.id == "user-chat" for event in events)


def test_most_wild_names_are_ones_the_portal_would_refuse_as_they_are() -> None:
    kept = [name for name in WILD_NAMES if clean_name(name) == name]
    assert kept == ["Мария", "李小龙"]  # other scripts are letters too
