"""Bytes <-> `ChatEvent`: Confluent Schema Registry framing and Avro single-object encoding.

The wire format is detected per record from its first bytes:

* `00 <schema id: 4 bytes big-endian> <avro>` — the writer schema is fetched from a
  Confluent-compatible registry once per id and resolved against the bundled reader.
* `C3 01 <CRC-64-AVRO fingerprint: 8 bytes little-endian> <avro>` — the writer schema is
  looked up among the bundled released versions; no registry needed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal, NamedTuple, cast

import fastavro

from consumer.codec.bundle import get_bundle, schema_fingerprint, writer_risks
from consumer.codec.records import event_from_record, event_to_record
from consumer.codec.registry import SchemaRegistryClient
from consumer.core.events import ChatEvent
from consumer.errors import (
    PoisonRecord,
    SchemaMismatch,
    UnknownSchema,
    UnknownWireFormat,
)

WireFormat = Literal["confluent", "single-object"]

CONFLUENT_MAGIC = 0
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SUBJECT_SUFFIX = "-value"
# Kafka's default message.max.bytes is ~1 MiB; a bigger datum is not a chat event.
_MAX_RECORD_BYTES = 1024 * 1024


class _WriterCheck(NamedTuple):
    """What the decoder found out about one registry writer schema (kept per object)."""

    writer: Any
    risk: str | None  # why its records cannot be read safely, if they cannot
    recursive: bool  # refused: no reader bounds its nesting
    is_reader: bool  # the bundled reader's canonical form: the generated reader applies


class ChatEventDecoder:
    """Decodes record values in either wire format into `ChatEvent`s.

    Raises a `PoisonRecord` subclass for bytes that can never decode, and
    `RegistryUnavailable` when the registry is needed but does not answer.

    `fast=False` reads the bundled reader's own records with fastavro too: the reference
    the generated reader is tested against, not something to run in production.
    """

    def __init__(self, registry: Any = None, *, fast: bool = True) -> None:
        self._registry = registry
        self._bundle = get_bundle()
        self._fast_reader = self._bundle.fast_reader if fast else None
        self._checked: dict[int, _WriterCheck] = {}

    def decode(self, value: bytes | None) -> ChatEvent:
        """Decode one record value.

        The connector id comes out lower-cased, once, here: the portal lower-cases it in
        some places and not in others (`Connector::isConnector` does, the line status and
        the customer's `XML_ID` do not), so a mixed-case id would split users and lines;
        from here on the chat key, the request and the portal all see one spelling.
        """
        event = self.read(value)
        connector = event.connector
        if not connector.islower() and connector.lower() != connector:
            return replace(event, connector=connector.lower())
        return event

    def read(self, value: bytes | None) -> ChatEvent:
        """Decode one record value exactly as it was written (no normalisation)."""
        if not value:
            raise UnknownWireFormat("empty record value (a tombstone?)", code="EMPTY")
        if len(value) > _MAX_RECORD_BYTES:
            raise SchemaMismatch(
                f"record of {len(value)} bytes exceeds the 1 MiB limit", code="TOO_LARGE"
            )
        if value[0] == CONFLUENT_MAGIC:
            if len(value) < 5:
                raise UnknownWireFormat(
                    "Confluent framing truncated before the schema id", code="TRUNCATED"
                )
            (schema_id,) = struct.unpack_from(">I", value, 1)
            if self._registry is None:
                raise UnknownSchema(
                    f"record uses Confluent framing (schema id {schema_id}) but no schema "
                    "registry is configured (set IMCONNECTOR_SCHEMA_REGISTRY_URL)",
                    code="NO_REGISTRY",
                )
            writer = self._registry.get_schema(schema_id)
            checked = self._checked.get(id(writer))
            if checked is None or checked.writer is not writer:
                risk, recursive = writer_risks(writer)
                # A registered copy of the bundled reader (the usual case) encodes exactly
                # like it, so its records take the bundled reader's strict fast path.
                same = risk is None and self._is_reader(writer)
                checked = _WriterCheck(writer, risk, recursive, same)
                self._checked[id(writer)] = checked
            if checked.risk is None and checked.recursive:
                checked = checked._replace(
                    risk="it has a recursive type, whose nesting no reader bounds (a deep "
                    "value would exhaust the stack): register the writer without recursion"
                )
                self._checked[id(writer)] = checked
            if checked.risk is not None:
                raise SchemaMismatch(
                    f"schema id {schema_id} cannot be read safely: {checked.risk}",
                    code="UNSUPPORTED_WRITER_SCHEMA",
                )
            if checked.is_reader:
                return self._read(value, 5, self._bundle.reader)
            return self._read(value, 5, writer)
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < 10:
                raise UnknownWireFormat("single-object header truncated", code="TRUNCATED")
            fp = value[2:10]
            writer = self._bundle.by_fingerprint.get(fp)
            if writer is None:
                raise UnknownSchema(
                    f"fingerprint {fp.hex()} matches no bundled ChatEvent version",
                    code="UNKNOWN_FINGERPRINT",
                )
            return self._read(value, 10, writer)
        raise UnknownWireFormat(
            f"first byte 0x{value[0]:02x} is neither Confluent framing (0x00) nor "
            "single-object encoding (0xC3 0x01)",
            code="UNKNOWN_MAGIC",
        )

    def _is_reader(self, writer: Any) -> bool:
        """True when `writer` has the bundled reader's canonical form."""
        try:
            return schema_fingerprint(writer) == self._bundle.reader_fingerprint
        except Exception:  # noqa: BLE001 - an odd schema is simply not the reader
            return False

    def _read(self, value: bytes, offset: int, writer: Any) -> ChatEvent:
        """Decode exactly one datum, refusing corrupt bytes fastavro would accept.

        Records written with the bundled reader itself (every single-object record of the
        newest version) go through the generated reader, which is strict by construction;
        every other writer goes through fastavro (`_read_fastavro`).
        """
        fast_reader = self._fast_reader
        if fast_reader is not None and writer is self._bundle.reader:
            try:
                event, end = fast_reader(value, offset)
            except PoisonRecord:
                raise
            except IndexError as exc:
                raise SchemaMismatch(
                    "the Avro datum ends before its last field", code="AVRO_DECODE"
                ) from exc
            except Exception as exc:
                raise SchemaMismatch(
                    f"Avro decoding failed: {type(exc).__name__}: {exc}"[:300], code="AVRO_DECODE"
                ) from exc
            if end != len(value):
                raise SchemaMismatch(
                    f"{len(value) - end} trailing bytes after the Avro datum",
                    code="TRAILING_BYTES",
                )
            return cast(ChatEvent, event)
        return self._read_fastavro(value, offset, writer)

    def _read_fastavro(self, value: bytes, offset: int, writer: Any) -> ChatEvent:
        """`_read` with fastavro: read with the writer alone, prove the bytes canonical by
        re-encoding them, then (for a writer other than the reader) resolve.

        fastavro takes a negative union index (Python indexing picks a branch from the
        end), overlong varints and more than one array block, and does not bound-check
        fields it skips during resolution: each could turn a corrupt record into a
        *different* valid-looking event, and the re-encode refuses all of them. Its writer
        does not range-check a plain `int` field, so the bundled reader's own records are
        also range-checked: the generated reader refuses such ints, and the two paths must
        agree on that schema.
        """
        stream = io.BytesIO(value)
        stream.seek(offset)
        read = fastavro.schemaless_reader
        bundle = self._bundle
        try:
            record = read(
                stream, writer, None, return_record_name=True, return_record_name_override=True
            )
            self._check_end(stream, value)
            again = io.BytesIO()
            fastavro.schemaless_writer(again, writer, record)
            if again.getbuffer() != memoryview(value)[offset:]:
                raise SchemaMismatch(_NON_CANONICAL, code="NON_CANONICAL")
            if writer is bundle.reader:
                wide = _wide_int(record, writer, writer["__named_schemas"])
                if wide is not None:
                    raise SchemaMismatch(
                        f"int {wide} is outside the 32-bit range", code="AVRO_DECODE"
                    )
            else:
                stream.seek(offset)
                record = read(
                    stream,
                    writer,
                    bundle.reader,
                    return_record_name=True,
                    return_record_name_override=True,
                )
            return event_from_record(cast(Mapping[str, Any], record))
        except PoisonRecord:
            raise
        except Exception as exc:
            raise SchemaMismatch(
                f"Avro decoding failed: {type(exc).__name__}: {exc}"[:300], code="AVRO_DECODE"
            ) from exc

    @staticmethod
    def _check_end(stream: io.BytesIO, value: bytes) -> None:
        if stream.tell() != len(value):
            raise SchemaMismatch(
                f"{len(value) - stream.tell()} trailing bytes after the Avro datum",
                code="TRAILING_BYTES",
            )


def _wide_int(datum: Any, schema: Any, named: Mapping[str, Any]) -> int | None:
    """The first `int` in `datum` (read with the parsed `schema`) outside 32 bits, if any.

    fastavro's writer picks a union branch by validating the datum against it, which
    checks an int's range, but writes a plain `int` field (or a record named in tuple
    notation) unchecked; `fastavro.validation.validate` re-parses the schema per call
    (~130 us), hence this walk.
    """
    if isinstance(schema, str):
        if schema == "int":
            return None if -(2**31) <= datum < 2**31 else int(datum)
        target = named.get(schema)
        return None if target is None else _wide_int(datum, target, named)
    if isinstance(schema, list):
        if isinstance(datum, tuple):
            return _wide_int(datum[1], datum[0], named)
        return None  # the writer validated the branch it chose
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record":
            for field in schema["fields"]:
                found = _wide_int(datum.get(field["name"]), field["type"], named)
                if found is not None:
                    return found
            return None
        if kind == "array":
            for item in datum:
                found = _wide_int(item, schema["items"], named)
                if found is not None:
                    return found
            return None
        return _wide_int(datum, kind, named) if isinstance(kind, str) else None
    return None


_NON_CANONICAL = (
    "the bytes are not the canonical encoding of what they decode to "
    "(negative union index, overlong length or corrupt block)"
)


class ChatEventEncoder:
    """Encodes `ChatEvent`s for producers (upstream services, the demo, the tests)."""

    def __init__(
        self,
        wire: WireFormat = "single-object",
        registry: SchemaRegistryClient | None = None,
        subject: str = "chat-events-value",
    ) -> None:
        bundle = get_bundle()
        self._schema = bundle.reader
        if wire == "confluent":
            if registry is None:
                raise ValueError("the confluent wire format needs a schema registry")
            schema_id = registry.register(subject, bundle.reader_raw)
            self._header = bytes([CONFLUENT_MAGIC]) + struct.pack(">I", schema_id)
        else:
            self._header = SINGLE_OBJECT_MAGIC + bundle.reader_fingerprint

    def encode(self, event: ChatEvent) -> bytes:
        """Return the framed Avro bytes of `event`."""
        out = io.BytesIO()
        out.write(self._header)
        fastavro.schemaless_writer(out, self._schema, event_to_record(event))
        return out.getvalue()
