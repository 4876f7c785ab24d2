"""Connector ids are lower-cased once, where events are decoded (issue 16 item 8)."""

from __future__ import annotations

import pytest

from consumer.codec import ChatEventDecoder, ChatEventEncoder
from consumer.core.events import ChatEvent, ExternalUser, MessageSent
from consumer.core.mapping import element_for


@pytest.mark.parametrize("connector", ["My_Connector", "MY_CONNECTOR", "my_connector"])
def test_the_decoded_event_its_chat_key_and_request_use_the_lower_case_id(
    connector: str,
) -> None:
    event = ChatEvent(
        "e1", "portal", connector, 3, "Chat-A", 1, MessageSent("m1", "hi"), 1, ExternalUser("u")
    )
    decoder = ChatEventDecoder()
    decoded = decoder.decode(ChatEventEncoder("single-object").encode(event))
    assert decoded.connector == "my_connector"
    assert decoded.key == "portal|my_connector|3|Chat-A"  # chat ids keep their case
    assert decoded.payload == event.payload and decoded.user == event.user
    _, element = element_for(decoded, None)
    assert element["chat"] == {"id": "Chat-A"}
