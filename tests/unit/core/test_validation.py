"""The fields that route an event are checked before they route anything (issue 15 item 3)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consumer.core.events import ChatEvent, MessageSent
from consumer.core.validation import invalid_field

PORTALS = {"portal-a", "portal-b"}
GOOD = ChatEvent("e1", "portal-a", "conn", 7, "chat-1", 1, MessageSent("m1", "hi"), 1)


def test_a_routable_event_passes():
    assert invalid_field(GOOD, PORTALS) is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"portal": ""}, "portal is empty"),
        ({"connector": "  "}, "connector is empty"),
        ({"chat_id": ""}, "chat_id is empty"),
        ({"chat_id": "a|b"}, "chat_id 'a|b' contains the chat key separator"),
        ({"portal": "portal-a|x"}, "portal 'portal-a|x' contains the chat key separator"),
        ({"connector": "c|1"}, "connector 'c|1' contains the chat key separator"),
        ({"chat_id": "a\nb"}, "chat_id 'a\\nb' contains a control character"),
        ({"connector": "c\x00"}, "contains a control character"),
        ({"chat_id": "x" * 256}, "chat_id is 256 characters long (at most 255)"),
        ({"connector": "c" * 65}, "connector is 65 characters long"),
        ({"line": 0}, "line 0 is not a positive"),
        ({"line": -3}, "line -3 is not a positive"),
        ({"portal": "portal-z"}, "portal 'portal-z' is not configured"),
    ],
)
def test_each_unroutable_field_is_named(change, named):
    problem = invalid_field(replace(GOOD, **change), PORTALS)
    assert problem is not None and named in problem


def test_another_tenants_portal_is_never_reached_through_a_look_alike():
    """`portal-a|conn|7|x` as a portal would make the chat key of portal-a's chat `x`."""
    forged = replace(GOOD, portal="portal-a|conn|7|x")
    assert "separator" in (invalid_field(forged, PORTALS) or "")
