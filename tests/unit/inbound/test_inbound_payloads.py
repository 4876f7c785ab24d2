"""Bitrix24 event payloads into OperatorEvents: the documented examples of every connector
event (api-reference/imopenlines/imconnector/events/*.md), form bodies, and refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consumer.inbound.payloads import (
    EVENT_NAMES,
    MAX_FORM_DEPTH,
    MalformedEvent,
    events_from_data,
    events_from_offline_record,
    parse_envelope,
    parse_form,
)
from consumer.simulator.events import encode_form

# The request of on-im-connector-message-add.md, as JSON.
MESSAGE_ADD: dict[str, Any] = {
    "event": "ONIMCONNECTORMESSAGEADD",
    "event_handler_id": 555,
    "data": {
        "CONNECTOR": "myconnector",
        "LINE": 107,
        "MESSAGES": [
            {
                "im": {"chat_id": 1807, "message_id": 86497},
                "message": {"user_id": 27, "text": "[b]Klaus Weber:[/b] [br]Guten Tag!"},
                "chat": {"id": "channel-123"},
            }
        ],
    },
    "ts": 1773759161,
    "auth": {
        "access_token": "c978b990071b0008440001b0895f697a",
        "member_id": "bac1cd5c8940947a75e0d71b1a84e348",
        "user_id": 27,
        "application_token": "831c76b092f9f135d9b6b36c3a720757",
    },
}


def pushed(body: dict[str, Any]) -> Any:
    """What the handler sees: the body form-encoded the way Bitrix24 sends it, parsed."""
    return parse_envelope(parse_form(encode_form(body).decode()))


def test_the_documented_message_add_arrives_whole_through_a_form_body() -> None:
    envelope = pushed(MESSAGE_ADD)
    assert (envelope.event, envelope.kind, envelope.ts) == (
        "ONIMCONNECTORMESSAGEADD",
        "MessageAdd",
        1773759161,
    )
    assert envelope.member_id == "bac1cd5c8940947a75e0d71b1a84e348"
    assert envelope.application_token == "831c76b092f9f135d9b6b36c3a720757"
    [event] = events_from_data(
        "MessageAdd", envelope.data, portal="p", occurred_at=1, source="push"
    )
    assert (event.connector, event.line, event.chat_id) == ("myconnector", 107, "channel-123")
    assert (event.im_chat_id, event.im_message_id, event.operator_id) == (1807, 86497, 27)
    assert event.text == "[b]Klaus Weber:[/b] [br]Guten Tag!"
    assert event.message_ids == ()


def test_update_carries_the_stored_external_ids_and_delete_one_of_them() -> None:
    # on-im-connector-message-update.md / -delete.md
    update = {
        "CONNECTOR": "myconnector",
        "LINE": 107,
        "MESSAGES": [
            {
                "im": {"chat_id": 1807, "message_id": 86501},
                "message": {"id": ["ext-msg-005"], "text": "What questions do you have?"},
                "chat": {"id": "channel-123"},
            }
        ],
    }
    form = parse_form(encode_form({"data": update}).decode())["data"]
    [edited] = events_from_data("MessageUpdate", form, portal="p", occurred_at=1, source="push")
    assert edited.message_ids == ("ext-msg-005",)
    assert edited.text == "What questions do you have?"
    delete = copy.deepcopy(update)
    delete["MESSAGES"][0]["message"] = {"id": "ext-msg-005"}
    [deleted] = events_from_data("MessageDelete", delete, portal="p", occurred_at=1, source="pull")
    assert (deleted.message_ids, deleted.text) == (("ext-msg-005",), None)


def test_dialog_status_and_line_events() -> None:
    # on-im-connector-dialog-start.md (LINE is a string there), -status-delete, -line-delete.
    dialog = {
        "CONNECTOR": "newcustomconnector",
        "LINE": "105",
        "DATA": [
            {
                "connector": {
                    "connector_id": "c",
                    "line_id": 105,
                    "chat_id": "ext-8",
                    "user_id": 0,
                },
                "session": {"id": 3282, "closed": "N", "parent_id": 0, "close_term": 10},
                "chat": {"id": 8},
                "user": {"id": 0},
            }
        ],
    }
    [started] = events_from_data("DialogStart", dialog, portal="p", occurred_at=1, source="push")
    assert (started.line, started.chat_id, started.im_chat_id, started.session_id) == (
        105,
        "ext-8",
        8,
        3282,
    )
    [disabled] = events_from_data(
        "StatusDelete", {"connector": "c", "line": 107}, portal="p", occurred_at=1, source="push"
    )
    assert (disabled.connector, disabled.line, disabled.chat_id) == ("c", 107, "")
    [gone] = events_from_data("LineDelete", "107", portal="p", occurred_at=1, source="push")
    assert (gone.connector, gone.line) == ("", 107)


def test_files_keep_link_name_mime_and_size() -> None:
    data = copy.deepcopy(MESSAGE_ADD["data"])
    data["MESSAGES"][0]["message"]["files"] = [
        {
            "name": "a.pdf",
            "type": "file",
            "mime": "application/pdf",
            "link": "https://x/1",
            "size": "1200",
        },
        {"name": "no link"},
    ]
    [event] = events_from_data("MessageAdd", data, portal="p", occurred_at=1, source="push")
    assert [(f.link, f.name, f.mime, f.size) for f in event.files] == [
        ("https://x/1", "a.pdf", "application/pdf", 1200)
    ]


def test_one_event_per_element() -> None:
    data = copy.deepcopy(MESSAGE_ADD["data"])
    second = copy.deepcopy(data["MESSAGES"][0])
    second["im"]["message_id"] = 86498
    second["chat"]["id"] = "channel-124"
    data["MESSAGES"].append(second)
    events = events_from_data("MessageAdd", data, portal="p", occurred_at=1, source="push")
    assert [e.key for e in events] == [
        "p|myconnector|107|channel-123",
        "p|myconnector|107|channel-124",
    ]


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("MESSAGES", 0, "im", "chat_id"), None, "im.chat_id"),
        (("MESSAGES", 0, "im", "message_id"), "abc", "im.message_id"),
        (("MESSAGES", 0, "chat", "id"), "", "chat.id"),
        (("MESSAGES", 0, "chat"), "flat", "chat"),
        (("MESSAGES",), [], "data.MESSAGES"),
        (("LINE",), 2**31, "data.LINE"),
        (("MESSAGES", 0, "im", "message_id"), str(2**63), "im.message_id"),
        (("CONNECTOR",), None, "data.CONNECTOR"),
    ],
)
def test_a_missing_or_wrong_field_is_named(path: tuple[Any, ...], value: Any, named: str) -> None:
    data = copy.deepcopy(MESSAGE_ADD["data"])
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(MalformedEvent, match=named.replace(".", r"\.")):
        events_from_data("MessageAdd", data, portal="p", occurred_at=1, source="push")


def test_not_an_object_is_malformed() -> None:
    for data in (None, "text", []):
        with pytest.raises(MalformedEvent):
            events_from_data("MessageAdd", data, portal="p", occurred_at=1, source="push")


def test_form_parsing_follows_php() -> None:
    form = parse_form("a[]=x&a[]=y&b[k][0]=1&b[k][1]=2&c=plain&d[5]=sparse&e=1&e[x]=2")
    assert form == {
        "a": ["x", "y"],
        "b": {"k": ["1", "2"]},
        "c": "plain",
        "d": {"5": "sparse"},
        "e": {"x": "2"},
    }


def test_form_bounds() -> None:
    deep = "a" + "[x]" * MAX_FORM_DEPTH + "=1"
    with pytest.raises(MalformedEvent, match="nests deeper"):
        parse_form(deep)
    with pytest.raises(MalformedEvent, match="form body"):
        parse_form("&".join(f"f{i}=1" for i in range(10_001)))


def test_envelope_without_event_is_malformed_and_auth_may_be_missing() -> None:
    with pytest.raises(MalformedEvent, match="event"):
        parse_envelope({"data": {}})
    envelope = parse_envelope({"event": "onimconnectormessageadd", "ts": "x"})
    assert (envelope.member_id, envelope.application_token, envelope.ts) == (None, None, None)
    assert envelope.kind == "MessageAdd"
    assert parse_envelope({"event": "ONAPPINSTALL"}).kind is None


def test_offline_record_uses_timestamp_x() -> None:
    record = {
        "ID": "1",
        "TIMESTAMP_X": "2024-07-18T12:32:31+02:00",
        "EVENT_NAME": "ONIMCONNECTORMESSAGEADD",
        "EVENT_DATA": MESSAGE_ADD["data"],
        "EVENT_ADDITIONAL": {"user_id": "27"},
        "MESSAGE_ID": "0" * 32,
    }
    [event] = events_from_offline_record(record, "p")
    assert event.occurred_at == 1_721_298_751_000 and event.source == "pull"
    with pytest.raises(MalformedEvent, match="TIMESTAMP_X"):
        events_from_offline_record({**record, "TIMESTAMP_X": "yesterday"}, "p")
    with pytest.raises(MalformedEvent, match="EVENT_NAME"):
        events_from_offline_record({**record, "EVENT_NAME": "ONCRMLEADADD"}, "p")


def test_bind_names_are_the_documented_events() -> None:
    assert EVENT_NAMES == (
        "OnImConnectorMessageAdd",
        "OnImConnectorMessageUpdate",
        "OnImConnectorMessageDelete",
        "OnImConnectorDialogStart",
        "OnImConnectorDialogFinish",
        "OnImConnectorStatusDelete",
        "OnImConnectorLineDelete",
    )
