"""The `OperatorEvent` contract: the typed value, its stable `event_id`, and its Avro bytes.

Bytes are Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint, no registry
needed) or Confluent framing (magic 0 + the schema id the registry gave
`schemas/operator_event.v<N>.avsc`), exactly like the chat events the service consumes
(`consumer.codec`), so a reader of one topic can read the other.
"""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

import fastavro

import schemas
from consumer.codec.bundle import parse_plain, schema_fingerprint
from consumer.codec.decoder import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, WireFormat
from consumer.codec.registry import SchemaRegistryClient
from consumer.core.events import ChatKey, chat_key
from consumer.core.frozen import frozen
from consumer.errors import SchemaMismatch, UnknownSchema, UnknownWireFormat

FAMILY = "operator_event"
# A fixed namespace: the same change always maps to the same event_id, in every process.
EVENT_ID_NAMESPACE = uuid.UUID("6b1c3f0e-8a53-5d6e-9f1a-2c4b7d9e0a31")

Kind = Literal[
    "MessageAdd",
    "MessageUpdate",
    "MessageDelete",
    "DialogStart",
    "DialogFinish",
    "StatusDelete",
    "LineDelete",
]
Source = Literal["push", "pull"]


@frozen
class OperatorFile:
    """A file of an operator message (`message.files[]`: Bitrix24 serves it at `link`)."""

    link: str
    name: str | None = None
    mime: str | None = None
    size: int | None = None


@frozen
class OperatorEvent:
    """One element of an `OnImConnector*` event, for one chat (or one line)."""

    event_id: str
    kind: Kind
    portal: str
    connector: str
    line: int
    chat_id: str
    occurred_at: int  # epoch milliseconds, Bitrix24's time
    source: Source
    im_chat_id: int | None = None
    im_message_id: int | None = None
    message_ids: tuple[str, ...] = ()
    operator_id: int | None = None
    text: str | None = None
    files: tuple[OperatorFile, ...] = ()
    session_id: int | None = None

    @property
    def key(self) -> ChatKey:
        """`portal|connector|line|chat_id`, the key of the chat events: one chat, one partition."""
        return chat_key(self.portal, self.connector, self.line, self.chat_id)


def make_event(
    *,
    kind: Kind,
    portal: str,
    connector: str,
    line: int,
    chat_id: str,
    occurred_at: int,
    source: Source,
    im_chat_id: int | None = None,
    im_message_id: int | None = None,
    message_ids: tuple[str, ...] = (),
    operator_id: int | None = None,
    text: str | None = None,
    files: tuple[OperatorFile, ...] = (),
    session_id: int | None = None,
) -> OperatorEvent:
    """An `OperatorEvent` with its stable `event_id`: UUIDv5 of portal, kind and the change.

    The change is what makes it distinct from another of the same kind (`_change`); it
    never holds the delivery time or the way it came, so an event fetched twice, or pushed
    and later pulled, keeps its id.
    """
    change = _change(kind, connector, line, chat_id, im_message_id, message_ids, text, files)
    if kind in ("DialogStart", "DialogFinish"):
        change = f"{change}|{session_id}"
    return OperatorEvent(
        event_id=str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{portal}|{kind}|{change}")),
        kind=kind,
        portal=portal,
        connector=connector,
        line=line,
        chat_id=chat_id,
        occurred_at=occurred_at,
        source=source,
        im_chat_id=im_chat_id,
        im_message_id=im_message_id,
        message_ids=message_ids,
        operator_id=operator_id,
        text=text,
        files=files,
        session_id=session_id,
    )


def _change(
    kind: str,
    connector: str,
    line: int,
    chat_id: str,
    im_message_id: int | None,
    message_ids: tuple[str, ...],
    text: str | None,
    files: tuple[OperatorFile, ...],
) -> str:
    """An added message is its Bitrix24 message id. An edit is the message id and a digest
    of the new content: two edits of one message are two changes, the same edit delivered
    twice is one. A delete is the message id and the external id removed (Bitrix24 sends
    one element per stored external id). Dialog events are their chat (and session);
    line-level events their connector and line."""
    if kind == "MessageAdd":
        return f"{im_message_id}"
    if kind == "MessageUpdate":
        content = repr((text, message_ids, [(f.link, f.name) for f in files]))
        return f"{im_message_id}|{hashlib.sha256(content.encode()).hexdigest()[:32]}"
    if kind == "MessageDelete":
        return f"{im_message_id}|{','.join(message_ids)}"
    if kind in ("DialogStart", "DialogFinish"):
        return f"{connector}|{line}|{chat_id}"
    return f"{connector}|{line}"


# -- Avro --------------------------------------------------------------------------------


@cache
def _bundle() -> tuple[dict[str, Any], Any, bytes, dict[bytes, Any]]:
    """(raw reader schema, parsed reader, its fingerprint, fingerprint -> parsed writer)."""
    versions = schemas.released_versions(FAMILY)
    raw = versions[-1][1]
    reader = parse_plain(raw)
    by_fingerprint = {schema_fingerprint(v): parse_plain(v) for _, v in versions}
    by_fingerprint[schema_fingerprint(raw)] = reader
    return raw, reader, schema_fingerprint(raw), by_fingerprint


def reader_schema() -> dict[str, Any]:
    """The newest bundled `OperatorEvent` schema (what the registry is given)."""
    return _bundle()[0]


def to_record(event: OperatorEvent) -> dict[str, Any]:
    """The Avro record of `event`."""
    return {
        "event_id": event.event_id,
        "kind": event.kind,
        "portal": event.portal,
        "connector": event.connector,
        "line": event.line,
        "chat_id": event.chat_id,
        "im_chat_id": event.im_chat_id,
        "im_message_id": event.im_message_id,
        "message_ids": list(event.message_ids),
        "operator_id": event.operator_id,
        "text": event.text,
        "files": [
            {"link": f.link, "name": f.name, "mime": f.mime, "size": f.size} for f in event.files
        ],
        "session_id": event.session_id,
        "occurred_at": event.occurred_at,
        "source": event.source,
    }


def from_record(record: Mapping[str, Any]) -> OperatorEvent:
    """Inverse of `to_record`."""
    kind = str(record["kind"])
    source = str(record["source"])
    return OperatorEvent(
        event_id=str(record["event_id"]),
        kind=kind,  # type: ignore[arg-type]  # a newer writer may add kinds
        portal=str(record["portal"]),
        connector=str(record["connector"]),
        line=int(record["line"]),
        chat_id=str(record["chat_id"]),
        occurred_at=int(record["occurred_at"]),
        source=source,  # type: ignore[arg-type]
        im_chat_id=record.get("im_chat_id"),
        im_message_id=record.get("im_message_id"),
        message_ids=tuple(record.get("message_ids") or ()),
        operator_id=record.get("operator_id"),
        text=record.get("text"),
        files=tuple(
            OperatorFile(link=f["link"], name=f.get("name"), mime=f.get("mime"), size=f.get("size"))
            for f in record.get("files") or ()
        ),
        session_id=record.get("session_id"),
    )


class OperatorEventEncoder:
    """`OperatorEvent` -> framed Avro bytes, in the configured wire format."""

    def __init__(
        self,
        wire: WireFormat = "single-object",
        registry: SchemaRegistryClient | None = None,
        subject: str = "imconnector.operator-events-value",
    ) -> None:
        raw, reader, fingerprint, _ = _bundle()
        self._schema = reader
        if wire == "confluent":
            if registry is None:
                raise ValueError("the confluent wire format needs a schema registry")
            schema_id = registry.register(subject, raw)
            self._header = bytes([CONFLUENT_MAGIC]) + struct.pack(">I", schema_id)
        else:
            self._header = SINGLE_OBJECT_MAGIC + fingerprint

    def encode(self, event: OperatorEvent) -> bytes:
        """The framed Avro bytes of `event`."""
        out = io.BytesIO()
        out.write(self._header)
        fastavro.schemaless_writer(out, self._schema, to_record(event))
        return out.getvalue()


class OperatorEventDecoder:
    """Framed Avro bytes (either wire format) -> `OperatorEvent`; for downstream readers."""

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self._registry = registry

    def decode(self, value: bytes) -> OperatorEvent:
        """Decode one record value; `PoisonRecord` subclasses for bytes that never decode."""
        _, reader, _, by_fingerprint = _bundle()
        if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= 10:
            writer = by_fingerprint.get(value[2:10])
            if writer is None:
                raise UnknownSchema(
                    f"fingerprint {value[2:10].hex()} matches no bundled OperatorEvent version",
                    code="UNKNOWN_FINGERPRINT",
                )
            offset = 10
        elif value[:1] == bytes([CONFLUENT_MAGIC]) and len(value) >= 5:
            if self._registry is None:
                raise UnknownSchema(
                    "record uses Confluent framing but no schema registry was given",
                    code="NO_REGISTRY",
                )
            writer = self._registry.get_schema(struct.unpack_from(">I", value, 1)[0])
            offset = 5
        else:
            raise UnknownWireFormat(
                "neither Confluent framing nor single-object encoding", code="UNKNOWN_MAGIC"
            )
        stream = io.BytesIO(value)
        stream.seek(offset)
        try:
            record = fastavro.schemaless_reader(stream, writer, reader)
        except Exception as exc:
            raise SchemaMismatch(
                f"Avro decoding failed: {type(exc).__name__}: {exc}"[:300], code="AVRO_DECODE"
            ) from exc
        if stream.tell() != len(value):
            raise SchemaMismatch("trailing bytes after the Avro datum", code="TRAILING_BYTES")
        return from_record(record)  # type: ignore[arg-type]
