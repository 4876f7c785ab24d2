"""The OperatorEvent contract: stable event ids, the key, and both wire formats."""

from __future__ import annotations

import struct
from typing import Any

import pytest

import schemas
from consumer.codec.bundle import parse_plain, schema_fingerprint
from consumer.core.events import chat_key
from consumer.errors import UnknownSchema, UnknownWireFormat
from consumer.inbound.contract import (
    OperatorEventDecoder,
    OperatorEventEncoder,
    OperatorFile,
    make_event,
    reader_schema,
    to_record,
)


def added(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "kind": "MessageAdd",
        "portal": "p1",
        "connector": "conn",
        "line": 7,
        "chat_id": "chat-1",
        "occurred_at": 1_773_759_161_000,
        "source": "push",
        "im_chat_id": 1807,
        "im_message_id": 86497,
        "operator_id": 27,
        "text": "[b]Klaus Weber:[/b] [br]Guten Tag!",
        "files": (OperatorFile("https://p.example/f/1", "a.pdf", "application/pdf", 1200),),
    }
    fields.update(overrides)
    return make_event(**fields)


class FakeRegistry:
    """A registry that remembers what it registered (the encoder's and decoder's side)."""

    def __init__(self) -> None:
        self.schemas: dict[int, Any] = {}

    def register(self, subject: str, schema: Any) -> int:
        self.schemas[41] = parse_plain(schema)  # as SchemaRegistryClient.get_schema does
        return 41

    def get_schema(self, schema_id: int) -> Any:
        return self.schemas[schema_id]


def test_the_same_change_gets_the_same_id_however_and_whenever_it_came() -> None:
    pushed = added()
    pulled = added(source="pull", occurred_at=1_773_759_999_000)
    assert pushed.event_id == pulled.event_id
    assert added(im_message_id=86498).event_id != pushed.event_id
    assert added(portal="p2").event_id != pushed.event_id


def test_two_edits_of_one_message_are_two_changes() -> None:
    def edit(text: str) -> Any:
        return added(kind="MessageUpdate", text=text, message_ids=("ext-5",))

    assert edit("first").event_id == edit("first").event_id
    assert edit("first").event_id != edit("second").event_id
    assert edit("first").event_id != added(text="first").event_id  # another kind


def test_each_deleted_external_id_is_its_own_change() -> None:
    def delete(external: str) -> Any:
        return added(kind="MessageDelete", text=None, files=(), message_ids=(external,))

    assert delete("a").event_id != delete("b").event_id
    assert delete("a").event_id == delete("a").event_id


def test_dialog_events_are_their_session() -> None:
    def start(session: int) -> Any:
        return added(kind="DialogStart", im_message_id=None, text=None, session_id=session)

    assert start(1).event_id != start(2).event_id
    assert start(1).event_id == start(1).event_id


def test_key_is_the_chat_key_of_the_inbound_topic() -> None:
    event = added()
    assert event.key == chat_key("p1", "conn", 7, "chat-1") == "p1|conn|7|chat-1"


def test_single_object_round_trip_keeps_every_field() -> None:
    event = added(message_ids=("x", "y"), session_id=5)
    value = OperatorEventEncoder().encode(event)
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == schema_fingerprint(reader_schema())
    assert OperatorEventDecoder().decode(value) == event
    assert set(to_record(event)) == {f["name"] for f in reader_schema()["fields"]}


def test_confluent_framing_round_trip() -> None:
    registry = FakeRegistry()
    encoder = OperatorEventEncoder("confluent", registry)  # type: ignore[arg-type]
    value = encoder.encode(added())
    assert value[0] == 0 and struct.unpack_from(">I", value, 1)[0] == 41
    assert OperatorEventDecoder(registry).decode(value) == added()  # type: ignore[arg-type]


def test_decoder_refuses_unknown_bytes() -> None:
    decoder = OperatorEventDecoder()
    with pytest.raises(UnknownWireFormat):
        decoder.decode(b"{}")
    with pytest.raises(UnknownSchema):
        decoder.decode(b"\xc3\x01" + b"\x00" * 8 + b"\x00")
    with pytest.raises(UnknownSchema):
        decoder.decode(b"\x00\x00\x00\x00\x01\x00")  # Confluent, no registry given


def test_operator_event_is_its_own_family_and_chat_event_is_untouched() -> None:
    assert [v for v, _ in schemas.released_versions("operator_event")] == [1]
    assert schemas.released_versions()[-1][1]["name"] == "ChatEvent"
    assert schemas.released_versions("operator_event")[-1][1]["name"] == "OperatorEvent"
