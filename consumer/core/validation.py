"""The fields that route an event are checked before they route anything. Pure.

`portal` picks the credentials and the endpoint; `portal|connector|line|chat_id` is the
chat key (record key, changelog key, request grouping). A field that is empty, holds the
key separator `|` or a control character, or is absurdly long, a `line` below 1, or a
portal the service has no settings for, would split a chat, mix two chats, or send a
request with another tenant's token: such an event is dead-lettered (`invalid_event`)
with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Container

from consumer.core.events import ChatEvent

MAX_LENGTH = {"portal": 255, "connector": 64, "chat_id": 255}


def invalid_field(event: ChatEvent, portals: Container[str]) -> str | None:
    """Why `event` cannot be routed, naming the field; None when it can."""
    for name, limit in MAX_LENGTH.items():
        value: str = getattr(event, name)
        if not value.strip():
            return f"{name} is empty"
        if "|" in value:
            return f"{name} {value[:80]!r} contains the chat key separator '|'"
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            return f"{name} {value[:80]!r} contains a control character"
        if len(value) > limit:
            return f"{name} is {len(value)} characters long (at most {limit})"
    if event.line < 1:
        return f"line {event.line} is not a positive Open Channel id"
    if event.portal not in portals:
        return (
            f"portal {event.portal!r} is not configured (IMCONNECTOR_PORTALS): add it, then "
            "redrive this event"
        )
    return None
