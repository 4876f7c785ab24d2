"""Bytes <-> `ChatEvent`: Confluent Schema Registry framing and Avro single-object encoding.

The wire format is detected per record from its first bytes:

* `00 <schema id: 4 bytes big-endian> <avro>` — the writer schema is fetched from a
  Confluent-compatible registry once per id and resolved against the bundled reader.
* `C3 01 <CRC-64-AVRO fingerprint: 8 bytes little-endian> <avro>` — the writer schema is
  looked up among the bundled released versions; no registry needed.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast

import fastavro
import httpx
from fastavro import _read_py  # pure-Python reader: bounded recursion for recursive writers
from fastavro.schema import fingerprint, to_parsing_canonical_form

import schemas
from consumer.avro_fast import DatumReader, UnsupportedSchema, compile_reader
from consumer.errors import (
    PoisonRecord,
    RegistryUnavailable,
    SchemaMismatch,
    UnknownSchema,
    UnknownWireFormat,
)
from consumer.events import (
    PAYLOAD_KINDS,
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    File,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    Payload,
    ReadConfirmed,
)

WireFormat = Literal["confluent", "single-object"]

CONFLUENT_MAGIC = 0
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
NAMESPACE = "io.imconnector.events"
SUBJECT_SUFFIX = "-value"
# Kafka's default message.max.bytes is ~1 MiB; a bigger datum is not a chat event.
_MAX_RECORD_BYTES = 1024 * 1024

__all__ = [
    "ChatEventDecoder",
    "ChatEventEncoder",
    "SchemaRegistryClient",
    "WireFormat",
    "event_from_json",
    "event_from_record",
    "event_to_record",
]


def _plain(schema: Any) -> Any:
    """A copy of `schema` without logical types: same canonical form, much faster to read
    (no datetime/UUID objects built per record; the models keep epoch millis and strings)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(item) for item in schema]
    return schema


def parse_plain(schema: Mapping[str, Any]) -> Any:
    """Parse `schema` for decoding, with logical types stripped."""
    return fastavro.parse_schema(_plain(schema))


def writer_risks(schema: Any) -> tuple[str | None, bool]:
    """`(problem, recursive)` for a writer schema from a registry.

    `problem`: why it cannot be read safely at all — not a record, or an array/map of
    zero-width items (a 100-byte record could declare 2^60 items that take forever to
    skip). `recursive`: it has a recursive type, which fastavro's compiled reader follows
    without bound (a deeply nested record crashes the process), so such writers are read
    with the pure-Python reader, whose recursion limit turns depth into poison.
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return "the writer schema is not a record", False
    named: dict[str, Any] = {}
    recursive = False

    def qualify(name: str, namespace: str) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def zero_width(node: Any, namespace: str, seen: frozenset[str]) -> bool:
        if isinstance(node, str):
            if node == "null":
                return True
            ref = qualify(node, namespace)
            target = named.get(ref, named.get(node))
            return (
                target is not None
                and ref not in seen
                and zero_width(target, namespace, seen | {ref})
            )
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "record":
                return all(zero_width(f["type"], namespace, seen) for f in node["fields"])
            if kind == "fixed":
                return int(node.get("size", 1)) == 0
            if isinstance(kind, dict | str) and kind not in ("array", "map", "enum"):
                return zero_width(kind, namespace, seen)
        return False  # unions, arrays, maps, enums and primitives take at least a byte

    def walk(node: Any, namespace: str, stack: tuple[str, ...]) -> str | None:
        nonlocal recursive
        if isinstance(node, str):
            if qualify(node, namespace) in stack or node in stack:
                recursive = True
            return None
        if isinstance(node, list):
            for branch in node:
                found = walk(branch, namespace, stack)
                if found:
                    return found
            return None
        if not isinstance(node, dict):
            return None
        kind = node.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            namespace = str(node.get("namespace", namespace))
            name = qualify(str(node.get("name", "")), namespace)
            named[name] = node
            for f in node.get("fields", []) if kind != "enum" else []:
                found = walk(f.get("type"), namespace, (*stack, name))
                if found:
                    return found
            return None
        if kind in ("array", "map"):
            items = node.get("items") if kind == "array" else node.get("values")
            if zero_width(items, namespace, frozenset()):
                return f"an {kind} of zero-width items"
            return walk(items, namespace, stack)
        return walk(kind, namespace, stack) if isinstance(kind, dict | list) else None

    return walk(schema, "", ()), recursive


def _fingerprint(schema: Mapping[str, Any]) -> bytes:
    canonical = to_parsing_canonical_form(dict(schema))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


# Avro record full name -> the model it becomes; the generated reader calls these directly
# with the record's fields, which is what `event_from_record` does by hand.
_MODELS: dict[str, type] = {
    f"{NAMESPACE}.{model.__name__}": model
    for model in (
        ChatEvent,
        ExternalUser,
        File,
        ChatRenamed,
        MessageSent,
        MessageEdited,
        MessageDeleted,
        DeliveryConfirmed,
        ReadConfirmed,
    )
}


class _Bundle:
    """The released schema versions, parsed once: reader (newest), fingerprint index, and
    the reader generated for the newest version (None if it uses a type the generator
    does not cover: such a reader falls back to fastavro)."""

    def __init__(self) -> None:
        versions = schemas.released_versions()
        self.reader_raw = versions[-1][1]
        self.reader = parse_plain(self.reader_raw)
        self.reader_fingerprint = _fingerprint(self.reader_raw)
        self.by_fingerprint: dict[bytes, Any] = {}
        self.fast_reader: DatumReader | None
        try:
            self.fast_reader = compile_reader(self.reader, _MODELS)
        except UnsupportedSchema:
            self.fast_reader = None
        for _, raw in versions:
            parsed = self.reader if raw is self.reader_raw else parse_plain(raw)
            self.by_fingerprint[_fingerprint(raw)] = parsed


_bundle_lock = threading.Lock()
_bundle: _Bundle | None = None


def _get_bundle() -> _Bundle:
    global _bundle
    with _bundle_lock:
        if _bundle is None:
            _bundle = _Bundle()
        return _bundle


class SchemaRegistryClient:
    """A small Confluent Schema Registry client: fetch by id (cached) and register."""

    def __init__(self, url: str, *, timeout: float = 5.0, auth: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, auth=auth)
        self._by_id: dict[int, Any] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_schema(self, schema_id: int) -> Any:
        """Return the parsed writer schema for `schema_id`; raises `UnknownSchema` on 404."""
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            response = self._http.get(f"{self.url}/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"schema registry {self.url} unreachable ({type(exc).__name__}); "
                "records wait until it answers"
            ) from exc
        if response.status_code == 404:
            raise UnknownSchema(
                f"schema id {schema_id} is unknown to the registry", code="UNKNOWN_SCHEMA_ID"
            )
        if response.status_code != 200:
            raise RegistryUnavailable(
                f"schema registry {self.url} answered HTTP {response.status_code} for id "
                f"{schema_id}"
            )
        try:
            parsed = parse_plain(json.loads(response.json()["schema"]))
        except (ValueError, KeyError, TypeError, fastavro.schema.SchemaParseException) as exc:
            raise UnknownSchema(
                f"schema id {schema_id} is not a valid Avro schema: {exc}",
                code="INVALID_WRITER_SCHEMA",
            ) from exc
        with self._lock:
            self._by_id[schema_id] = parsed
        return parsed

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register `schema` under `subject` (idempotent) and return its id."""
        text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        with self._lock:
            known = self._ids.get((subject, text))
        if known is not None:
            return known
        try:
            response = self._http.post(
                f"{self.url}/subjects/{subject}/versions",
                json={"schema": text},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"registering {subject} at {self.url} failed: {exc}") from exc
        schema_id = int(response.json()["id"])
        with self._lock:
            self._ids[(subject, text)] = schema_id
        return schema_id

    def is_compatible(self, subject: str, schema: Mapping[str, Any]) -> bool:
        """Ask the registry whether `schema` is compatible with the subject's latest version."""
        response = self._http.post(
            f"{self.url}/compatibility/subjects/{subject}/versions/latest",
            json={"schema": json.dumps(schema)},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if response.status_code == 404:
            return True  # no version yet: anything is compatible
        response.raise_for_status()
        return bool(response.json()["is_compatible"])


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _files(items: Any) -> tuple[File, ...]:
    return tuple(File(url=f["url"], name=f.get("name")) for f in items or ())


def _payload_from(name: str, body: Mapping[str, Any]) -> Payload:
    short = name.rsplit(".", 1)[-1]
    if short == "MessageSent":
        return MessageSent(
            message_id=body["message_id"],
            text=body.get("text"),
            files=_files(body.get("files")),
            chat_name=body.get("chat_name"),
            chat_url=body.get("chat_url"),
            disable_crm=bool(body.get("disable_crm", False)),
            operator_id=body.get("operator_id"),
        )
    if short == "MessageEdited":
        return MessageEdited(
            message_id=body["message_id"], text=body.get("text"), files=_files(body.get("files"))
        )
    if short == "MessageDeleted":
        return MessageDeleted(message_id=body["message_id"])
    if short == "ChatRenamed":
        return ChatRenamed(name=body["name"])
    if short == "DeliveryConfirmed":
        delivered = body.get("delivered_at")
        return DeliveryConfirmed(
            im_chat_id=int(body["im_chat_id"]),
            im_message_id=int(body["im_message_id"]),
            message_ids=tuple(body["message_ids"]),
            delivered_at=None if delivered is None else _millis(delivered),
        )
    if short == "ReadConfirmed":
        return ReadConfirmed(
            im_chat_id=int(body["im_chat_id"]),
            im_message_id=int(body["im_message_id"]),
            message_ids=tuple(body["message_ids"]),
        )
    raise SchemaMismatch(f"unknown payload branch {name!r}", code="UNKNOWN_PAYLOAD")


def event_from_record(record: Mapping[str, Any]) -> ChatEvent:
    """Build a `ChatEvent` from a fastavro record read with `return_record_name=True`."""
    payload_raw = record["payload"]
    if not isinstance(payload_raw, tuple):
        raise SchemaMismatch("payload union without a branch name", code="UNKNOWN_PAYLOAD")
    user_raw = record.get("user")
    user = ExternalUser(**user_raw) if user_raw else None
    return ChatEvent(
        event_id=str(record["event_id"]),
        portal=record["portal"],
        connector=record["connector"],
        line=int(record["line"]),
        chat_id=record["chat_id"],
        occurred_at=_millis(record["occurred_at"]),
        payload=_payload_from(payload_raw[0], payload_raw[1]),
        sequence=record.get("sequence"),
        user=user,
    )


def event_from_json(doc: Mapping[str, Any]) -> ChatEvent:
    """A `ChatEvent` from the JSON shape of `imconnector-consumer produce`.

    `{"portal", "connector", "line", "chat_id", "sequence"?, "event_id"?, "occurred_at"?,
    "user"?: {...}, "type": "MessageSent", "payload": {...}}`
    """
    kind = doc.get("type")
    if kind not in PAYLOAD_KINDS:
        raise ValueError(f"'type' must be one of {', '.join(PAYLOAD_KINDS)}, got {kind!r}")
    record = {
        "event_id": doc.get("event_id") or str(uuid.uuid4()),
        "portal": doc["portal"],
        "connector": doc["connector"],
        "line": int(doc["line"]),
        "chat_id": str(doc["chat_id"]),
        "sequence": doc.get("sequence"),
        "occurred_at": int(doc.get("occurred_at") or time.time() * 1000),
        "user": doc.get("user"),
        "payload": (str(kind), dict(doc.get("payload") or {})),
    }
    return event_from_record(record)


def _payload_record(payload: Payload) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any]
    if isinstance(payload, MessageSent):
        body = {
            "message_id": payload.message_id,
            "text": payload.text,
            "files": [{"url": f.url, "name": f.name} for f in payload.files],
            "chat_name": payload.chat_name,
            "chat_url": payload.chat_url,
            "disable_crm": payload.disable_crm,
            "operator_id": payload.operator_id,
        }
    elif isinstance(payload, MessageEdited):
        body = {
            "message_id": payload.message_id,
            "text": payload.text,
            "files": [{"url": f.url, "name": f.name} for f in payload.files],
        }
    elif isinstance(payload, MessageDeleted):
        body = {"message_id": payload.message_id}
    elif isinstance(payload, ChatRenamed):
        body = {"name": payload.name}
    elif isinstance(payload, DeliveryConfirmed):
        body = {
            "im_chat_id": payload.im_chat_id,
            "im_message_id": payload.im_message_id,
            "message_ids": list(payload.message_ids),
            "delivered_at": payload.delivered_at,
        }
    else:
        body = {
            "im_chat_id": payload.im_chat_id,
            "im_message_id": payload.im_message_id,
            "message_ids": list(payload.message_ids),
        }
    return f"{NAMESPACE}.{payload.kind}", body


def event_to_record(event: ChatEvent) -> dict[str, Any]:
    """The fastavro-writable dict of `event` (payload in tuple notation)."""
    user = event.user
    return {
        "event_id": event.event_id,
        "portal": event.portal,
        "connector": event.connector,
        "line": event.line,
        "chat_id": event.chat_id,
        "sequence": event.sequence,
        "occurred_at": event.occurred_at,
        "user": None
        if user is None
        else {
            "id": user.id,
            "name": user.name,
            "last_name": user.last_name,
            "picture_url": user.picture_url,
            "url": user.url,
            "gender": user.gender,
            "email": user.email,
            "phone": user.phone,
        },
        "payload": _payload_record(event.payload),
    }


class _WriterCheck(NamedTuple):
    """What the decoder found out about one registry writer schema (kept per object)."""

    writer: Any
    risk: str | None  # why its records cannot be read safely, if they cannot
    recursive: bool  # needs the pure-Python reader (bounded recursion)
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
        self._bundle = _get_bundle()
        self._fast_reader = self._bundle.fast_reader if fast else None
        self._checked: dict[int, _WriterCheck] = {}

    def decode(self, value: bytes | None) -> ChatEvent:
        """Decode one record value."""
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
            if checked.risk is not None:
                raise SchemaMismatch(
                    f"schema id {schema_id} cannot be read safely: {checked.risk}",
                    code="UNSUPPORTED_WRITER_SCHEMA",
                )
            if checked.is_reader:
                return self._read(value, 5, self._bundle.reader)
            return self._read(value, 5, writer, pure_python=checked.recursive)
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
            return _fingerprint(writer) == self._bundle.reader_fingerprint
        except Exception:  # noqa: BLE001 - an odd schema is simply not the reader
            return False

    def _read(self, value: bytes, offset: int, writer: Any, pure_python: bool = False) -> ChatEvent:
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
        return self._read_fastavro(value, offset, writer, pure_python)

    def _read_fastavro(
        self, value: bytes, offset: int, writer: Any, pure_python: bool = False
    ) -> ChatEvent:
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
        read = _read_py.schemaless_reader if pure_python else fastavro.schemaless_reader
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
        bundle = _get_bundle()
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
