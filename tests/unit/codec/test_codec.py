"""The codec (architecture §2): both wire formats byte for byte, every poison code, schema
resolution (old writers stay readable), the registry client's error mapping, and the JSON
shape of `imconnector-consumer produce`.

Starts nothing: Confluent framing goes through an in-test fake registry (or the real client
on a mock transport); the few cases that can kill or hang the interpreter run in a
child process so that they fail instead of taking pytest down.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

import schemas
from consumer.codec import (
    ChatEventDecoder,
    ChatEventEncoder,
    SchemaRegistryClient,
    event_from_json,
    event_from_record,
    event_to_record,
)
from consumer.codec.bundle import parse_plain
from consumer.codec.registry import registry_http
from consumer.core.events import (
    PAYLOAD_KINDS,
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    File,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    ReadConfirmed,
)
from consumer.errors import (
    PoisonRecord,
    RegistryUnavailable,
    SchemaMismatch,
    UnknownSchema,
    UnknownWireFormat,
)
from tests.avro_bytes import zigzag

ROOT = Path(__file__).resolve().parents[3]
READER_RAW: dict[str, Any] = schemas.released_versions()[-1][1]
MAX_RECORD_BYTES = 1024 * 1024
CONFLUENT_ID = 0x01020304  # every byte distinct, so the byte order shows


class FakeRegistry:
    """Confluent registry stand-in: `get_schema(id)` for known ids, `register` for encoders."""

    def __init__(self) -> None:
        self.schemas: dict[int, Any] = {}
        self.fetched: list[int] = []

    def add(self, schema_id: int, raw: dict[str, Any]) -> int:
        self.schemas[schema_id] = parse_plain(raw)
        return schema_id

    def get_schema(self, schema_id: int) -> Any:
        self.fetched.append(schema_id)
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise UnknownSchema(
                f"schema id {schema_id} is unknown", code="UNKNOWN_SCHEMA_ID"
            ) from None

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        return self.add(CONFLUENT_ID, schema)


@pytest.fixture
def registry() -> FakeRegistry:
    fake = FakeRegistry()
    fake.add(CONFLUENT_ID, READER_RAW)
    return fake


def _uuid(n: int) -> str:
    return str(uuid.UUID(int=n))


def _event(
    n: int, payload: Any, *, sequence: int | None = None, user: ExternalUser | None = None
) -> ChatEvent:
    return ChatEvent(
        event_id=_uuid(n),
        portal="b24-member-0f3a",
        connector="tg_conn",
        line=7,
        chat_id=f"chat-{n}",
        occurred_at=1_764_000_000_000 + n,
        payload=payload,
        sequence=sequence,
        user=user,
    )


FULL_USER = ExternalUser(
    id="u-1",
    name="Анна",
    last_name="Иванова",
    picture_url="https://cdn.example.com/a.png",
    url="https://t.me/anna",
    gender="female",
    email="anna@example.com",
    phone="+79990000000",
)

# Every payload kind, each optional field both absent and present, envelope options varied.
SAMPLES: dict[str, ChatEvent] = {
    "sent-minimal": _event(1, MessageSent("m1")),
    "sent-full": _event(
        2,
        MessageSent(
            "m2",
            "Hello [b]there[/b] 👋",
            files=(File("https://files.example.com/a.png", "a.png"), File("https://x.example/b")),
            chat_name="Support",
            chat_url="https://t.me/x",
            disable_crm=True,
            operator_id=42,
        ),
        sequence=1,
        user=FULL_USER,
    ),
    "edited-minimal": _event(3, MessageEdited("m1"), sequence=2),
    "edited-full": _event(
        4,
        MessageEdited("m1", "fixed", files=(File("https://f/c", "c"),)),
        user=ExternalUser(id="u-2"),
    ),
    "deleted": _event(5, MessageDeleted("m1"), sequence=2**62),
    "renamed": _event(6, ChatRenamed(""), user=ExternalUser(id="u-3", email="e@example.com")),
    "delivered-minimal": _event(7, DeliveryConfirmed(1, 2, ())),
    "delivered-full": _event(
        8, DeliveryConfirmed(-(2**63), 2**63 - 1, ("op-1", "op-2"), 1_764_000_009_000), sequence=3
    ),
    "read": _event(9, ReadConfirmed(4242, 777, ("op-1",)), sequence=4, user=FULL_USER),
}


def _avro(writer_raw: dict[str, Any], event: ChatEvent, **extra: Any) -> bytes:
    """The Avro body of `event` as another producer writes it with schema `writer_raw`."""
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out, fastavro.parse_schema(copy.deepcopy(writer_raw)), {**event_to_record(event), **extra}
    )
    return out.getvalue()


def _confluent(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def _single_object(writer_raw: dict[str, Any], body: bytes) -> bytes:
    return (
        b"\xc3\x01"
        + bytes.fromhex(fingerprint(to_parsing_canonical_form(writer_raw), "CRC-64-AVRO"))
        + body
    )


def _decode_error(decoder: ChatEventDecoder, value: bytes | None) -> PoisonRecord:
    with pytest.raises(PoisonRecord) as caught:
        decoder.decode(value)
    return caught.value


# -- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["single-object", "confluent"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_payload_kind_round_trips_in_both_wire_formats(registry, wire, name):
    event = SAMPLES[name]
    encoder = ChatEventEncoder(wire, registry if wire == "confluent" else None)
    assert ChatEventDecoder(registry).decode(encoder.encode(event)) == event


def test_the_samples_cover_every_payload_kind():
    assert {e.kind for e in SAMPLES.values()} == set(PAYLOAD_KINDS)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_event_to_record_and_back_is_the_identity(name):
    assert event_from_record(event_to_record(SAMPLES[name])) == SAMPLES[name]


def test_a_record_written_with_only_the_required_fields_decodes_to_the_model_defaults():
    record = {
        "event_id": _uuid(1),
        "portal": "p",
        "connector": "c",
        "line": 1,
        "chat_id": "x",
        "occurred_at": 5,
        "payload": ("io.imconnector.events.MessageSent", {"message_id": "m"}),
    }
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(READER_RAW)), record)
    event = ChatEventDecoder().decode(_single_object(READER_RAW, out.getvalue()))
    assert event == ChatEvent(
        event_id=_uuid(1),
        portal="p",
        connector="c",
        line=1,
        chat_id="x",
        occurred_at=5,
        payload=MessageSent("m"),
    )
    assert event.sequence is None and event.user is None
    assert event.payload == MessageSent("m", None, (), None, None, False, None)


# -- the bytes on the wire ----------------------------------------------------------------------


def _rabin(data: bytes) -> int:
    """CRC-64-AVRO, written out from the Avro specification (independent of fastavro)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_single_object_encoding_is_c3_01_then_the_little_endian_crc64_avro_fingerprint():
    event = SAMPLES["sent-full"]
    value = ChatEventEncoder("single-object").encode(event)
    canonical = to_parsing_canonical_form(READER_RAW)
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    assert value[2:10] == struct.pack("<Q", _rabin(canonical.encode()))
    assert value[10:] == _avro(READER_RAW, event)


def test_confluent_framing_is_a_zero_byte_then_the_big_endian_schema_id(registry):
    event = SAMPLES["read"]
    value = ChatEventEncoder("confluent", registry).encode(event)
    assert value[:5] == b"\x00\x01\x02\x03\x04"
    assert value[5:] == _avro(READER_RAW, event)
    assert value[5:] == ChatEventEncoder("single-object").encode(event)[10:]
    assert ChatEventDecoder(registry).decode(value) == event
    assert registry.fetched == [CONFLUENT_ID]


def test_a_registered_copy_of_the_reader_takes_the_strict_generated_reader(registry, monkeypatch):
    """Confluent records whose registry schema *is* the bundled reader (by canonical form)
    decode without fastavro; a different writer schema still resolves through fastavro."""
    event = SAMPLES["read"]
    value = ChatEventEncoder("confluent", registry).encode(event)
    other = copy.deepcopy(READER_RAW)
    other["doc"] = "a registered copy: docs differ, canonical form does not"
    registry.add(7, other)
    copy_value = b"\x00" + struct.pack(">I", 7) + value[5:]
    overlong = value[:-1] + bytes([value[-1] | 0x80, 0x00])  # a non-minimal last varint

    def no_fastavro(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fastavro was used")

    monkeypatch.setattr(fastavro, "schemaless_reader", no_fastavro)
    decoder = ChatEventDecoder(registry)
    assert decoder.decode(value) == event
    assert decoder.decode(copy_value) == event
    with pytest.raises(SchemaMismatch):
        decoder.decode(overlong)
    registry.add(8, {**READER_RAW, "fields": READER_RAW["fields"][:-1]})  # not the reader
    with pytest.raises(SchemaMismatch, match="fastavro was used"):
        decoder.decode(b"\x00" + struct.pack(">I", 8) + value[5:])


def test_the_independent_fingerprint_agrees_with_fastavro_on_other_schemas():
    for schema in ('"int"', '"null"', '{"type":"array","items":"string"}'):
        assert struct.pack("<Q", _rabin(schema.encode())) == bytes.fromhex(
            fingerprint(schema, "CRC-64-AVRO")
        )


def test_the_confluent_encoder_needs_a_registry():
    with pytest.raises(ValueError, match="registry"):
        ChatEventEncoder("confluent")


# -- poison: one class and one code per way of being undecodable --------------------------------

VALID = ChatEventEncoder("single-object").encode(SAMPLES["sent-full"])
BODY = VALID[10:]
DELETED = ChatEventEncoder("single-object").encode(SAMPLES["deleted"])
UNKNOWN_FP = b"\xc3\x01" + b"\xde\xad\xbe\xef\x00\x11\x22\x33"

POISON_CASES: list[tuple[str, bytes | None, bool, type[PoisonRecord], str]] = [
    ("none", None, True, UnknownWireFormat, "EMPTY"),
    ("empty", b"", True, UnknownWireFormat, "EMPTY"),
    ("ascii", b"\x07not avro at all", True, UnknownWireFormat, "UNKNOWN_MAGIC"),
    ("json", b'{"type": "MessageSent"}', True, UnknownWireFormat, "UNKNOWN_MAGIC"),
    ("c3-then-02", b"\xc3\x02" + VALID[2:], True, UnknownWireFormat, "UNKNOWN_MAGIC"),
    ("first-byte-01", b"\x01" + VALID[1:], True, UnknownWireFormat, "UNKNOWN_MAGIC"),
    ("confluent-1-byte", b"\x00", True, UnknownWireFormat, "TRUNCATED"),
    ("confluent-4-bytes", b"\x00\x01\x02\x03", True, UnknownWireFormat, "TRUNCATED"),
    ("single-object-2-bytes", b"\xc3\x01", True, UnknownWireFormat, "TRUNCATED"),
    ("single-object-9-bytes", VALID[:9], True, UnknownWireFormat, "TRUNCATED"),
    ("unknown-fingerprint", UNKNOWN_FP + BODY, True, UnknownSchema, "UNKNOWN_FINGERPRINT"),
    ("unknown-schema-id", _confluent(999_999, BODY), True, UnknownSchema, "UNKNOWN_SCHEMA_ID"),
    ("no-registry", _confluent(CONFLUENT_ID, BODY), False, UnknownSchema, "NO_REGISTRY"),
    ("header-only", VALID[:10], True, SchemaMismatch, "AVRO_DECODE"),
    ("confluent-header-only", _confluent(CONFLUENT_ID, b""), True, SchemaMismatch, "AVRO_DECODE"),
    ("body-cut", VALID[:-1], True, SchemaMismatch, "AVRO_DECODE"),
    ("confluent-body-cut", _confluent(CONFLUENT_ID, BODY[:7]), True, SchemaMismatch, "AVRO_DECODE"),
    (
        "payload-branch-99",
        DELETED[:-4] + b"\xc6\x01" + DELETED[-3:],
        True,
        SchemaMismatch,
        "AVRO_DECODE",
    ),
    ("bad-utf8", VALID[:10] + b"\x04\xff\xfe" + BODY[37:], True, SchemaMismatch, "AVRO_DECODE"),
    ("trailing-zero", VALID + b"\x00", True, SchemaMismatch, "TRAILING_BYTES"),
    ("trailing-record", VALID + BODY, True, SchemaMismatch, "TRAILING_BYTES"),
    (
        "confluent-trailing",
        _confluent(CONFLUENT_ID, BODY + b"xyz"),
        True,
        SchemaMismatch,
        "TRAILING_BYTES",
    ),
    (
        "too-large",
        VALID + b"\x00" * (MAX_RECORD_BYTES + 1 - len(VALID)),
        True,
        SchemaMismatch,
        "TOO_LARGE",
    ),
    ("too-large-garbage", b"\x07" * (MAX_RECORD_BYTES + 1), True, SchemaMismatch, "TOO_LARGE"),
]


@pytest.mark.parametrize(
    ("value", "with_registry", "cls", "code"),
    [case[1:] for case in POISON_CASES],
    ids=[case[0] for case in POISON_CASES],
)
def test_each_kind_of_poison_raises_its_class_and_code(registry, value, with_registry, cls, code):
    decoder = ChatEventDecoder(registry if with_registry else None)
    error = _decode_error(decoder, value)
    assert type(error) is cls
    assert error.code == code
    assert error.reason == "poison"
    assert str(error)


def test_the_poison_table_covers_every_code_the_brief_names():
    assert {case[4] for case in POISON_CASES} == {
        "EMPTY",
        "UNKNOWN_MAGIC",
        "TRUNCATED",
        "UNKNOWN_FINGERPRINT",
        "UNKNOWN_SCHEMA_ID",
        "NO_REGISTRY",
        "AVRO_DECODE",
        "TRAILING_BYTES",
        "TOO_LARGE",
    }


def test_the_bad_utf8_case_really_corrupts_the_event_id():
    # guards the hand-made offset in POISON_CASES: BODY starts with the 36-char event id
    assert BODY[0] == 36 * 2 and BODY[1:37] == SAMPLES["sent-full"].event_id.encode()


def test_exactly_the_size_limit_is_not_too_large():
    value = VALID + b"\x00" * (MAX_RECORD_BYTES - len(VALID))
    assert _decode_error(ChatEventDecoder(), value).code == "TRAILING_BYTES"


@pytest.mark.parametrize("length", range(1, 10))
def test_every_truncated_header_is_poison_never_an_index_error(registry, length):
    for value in (VALID[:length], _confluent(CONFLUENT_ID, BODY)[:length]):
        error = _decode_error(ChatEventDecoder(registry), value)
        assert error.code in {"TRUNCATED", "UNKNOWN_MAGIC", "AVRO_DECODE"}, value
    if length >= 2:
        assert _decode_error(ChatEventDecoder(registry), VALID[:length]).code == "TRUNCATED"
    if length < 5:
        confluent = _confluent(CONFLUENT_ID, BODY)[:length]
        assert _decode_error(ChatEventDecoder(registry), confluent).code == "TRUNCATED"


def test_every_cut_of_a_valid_body_is_avro_decode(registry):
    for value in (VALID, _confluent(CONFLUENT_ID, BODY)):
        header = 10 if value[0] == 0xC3 else 5
        for cut in range(header, len(value)):
            error = _decode_error(ChatEventDecoder(registry), value[:cut])
            assert (type(error), error.code) == (SchemaMismatch, "AVRO_DECODE"), cut


def test_an_unreachable_registry_is_not_poison():
    class DownRegistry:
        def get_schema(self, schema_id: int) -> Any:
            raise RegistryUnavailable("schema registry unreachable")

    with pytest.raises(RegistryUnavailable) as caught:
        ChatEventDecoder(DownRegistry()).decode(_confluent(CONFLUENT_ID, BODY))
    assert not isinstance(caught.value, PoisonRecord)


def test_single_object_records_never_ask_the_registry(registry):
    ChatEventDecoder(registry).decode(VALID)
    _decode_error(ChatEventDecoder(registry), UNKNOWN_FP + BODY)
    assert registry.fetched == []


# -- the real registry client on a mock transport -----------------------------------------------


def _client(handler) -> SchemaRegistryClient:
    """The real client (confluent-kafka's underneath) on a mock transport of its own HTTP
    library (httpx2 when installed)."""
    client = SchemaRegistryClient("http://registry.test/")
    rest = client._client._rest_client
    rest.session.close()
    rest.session = registry_http.Client(transport=registry_http.MockTransport(handler))
    return client


def test_the_registry_client_fetches_a_writer_schema_once_and_caches_it():
    paths: list[str] = []

    def handler(request):
        paths.append(request.url.path)
        return registry_http.Response(200, json={"schema": json.dumps(READER_RAW)})

    with _client(handler) as client:
        decoder = ChatEventDecoder(client)
        value = _confluent(CONFLUENT_ID, BODY)
        assert decoder.decode(value) == decoder.decode(value) == SAMPLES["sent-full"]
    assert paths == [f"/schemas/ids/{CONFLUENT_ID}"]


def test_the_registry_client_maps_404_to_unknown_schema_id():
    answer = registry_http.Response(404, json={"error_code": 40403})
    with _client(lambda request: answer) as client:
        error = _decode_error(ChatEventDecoder(client), _confluent(7, BODY))
    assert (type(error), error.code) == (UnknownSchema, "UNKNOWN_SCHEMA_ID")


@pytest.mark.parametrize("answer", [500, 503, 401, "connect-error", "read-timeout"])
def test_the_registry_client_maps_other_failures_to_registry_unavailable(answer):
    def handler(request):
        if answer == "connect-error":
            raise registry_http.ConnectError("refused", request=request)
        if answer == "read-timeout":
            raise registry_http.ReadTimeout("slow", request=request)
        return registry_http.Response(answer)

    with _client(handler) as client, pytest.raises(RegistryUnavailable):
        ChatEventDecoder(client).decode(_confluent(7, BODY))


# Each is a 200 from something that is not a sane registry. The decoder must answer poison
# (INVALID_WRITER_SCHEMA at fetch, or AVRO_DECODE when the schema parses but cannot resolve),
# never let another exception out: the engine catches only PoisonRecord and RegistryUnavailable.
BAD_REGISTRY_BODIES = {
    "not-json": b"<html>proxy error</html>",
    "empty-object": b"{}",
    "schema-not-json": b'{"schema": "not json"}',
    "unknown-type": b'{"schema": "\\"nonsense\\""}',
    "record-without-name": b'{"schema": "{\\"type\\": \\"record\\"}"}',
    "array-without-items": b'{"schema": "{\\"type\\": \\"array\\"}"}',
    "empty-union": b'{"schema": "[]"}',
    "int-schema": b'{"schema": "\\"int\\""}',
    "json-array-body": b"[]",
    "json-null-body": b"null",
    "json-string-body": b'"x"',
    "schema-is-a-number": b'{"schema": 5}',
    "schema-is-null": b'{"schema": null}',
    "schema-text-is-a-number": b'{"schema": "123"}',
    "schema-text-is-null": b'{"schema": "null"}',
}


@pytest.mark.parametrize("body", list(BAD_REGISTRY_BODIES.values()), ids=list(BAD_REGISTRY_BODIES))
def test_a_garbage_registry_answer_is_poison_not_a_crash(body):
    with _client(lambda request: registry_http.Response(200, content=body)) as client:
        error = _decode_error(ChatEventDecoder(client), _confluent(7, BODY))
    assert error.code in {"INVALID_WRITER_SCHEMA", "AVRO_DECODE", "UNSUPPORTED_WRITER_SCHEMA"}


# -- schema resolution: old (and other) writers are readable by the current reader -------------


def _records(schema: Any) -> list[dict[str, Any]]:
    """Every record definition inside `schema`."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind == "record":
                found.append(node)
                for field in node["fields"]:
                    walk(field["type"])
            elif kind == "array":
                walk(node["items"])
            elif kind == "map":
                walk(node["values"])
            elif isinstance(kind, dict | list):
                walk(kind)

    walk(schema)
    return found


def _fields_by_record(schema: Any) -> dict[str, set[str]]:
    return {
        r["name"].rsplit(".", 1)[-1]: {f["name"] for f in r["fields"]} for r in _records(schema)
    }


def _as_written_by(event: ChatEvent, writer_raw: dict[str, Any]) -> ChatEvent:
    """`event` as the current reader sees it after `writer_raw` wrote it: every field the
    writer does not have takes the reader's default (which the model mirrors)."""
    present = _fields_by_record(writer_raw)

    def project(obj: Any) -> Any:
        name = type(obj).__name__
        changes = {}
        for field in dataclasses.fields(obj):
            if field.name == "kind":
                continue
            value = getattr(obj, field.name)
            if field.name not in present[name]:
                assert field.default is not dataclasses.MISSING, (name, field.name)
                changes[field.name] = field.default
            elif dataclasses.is_dataclass(value):
                changes[field.name] = project(value)
            elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
                changes[field.name] = tuple(project(item) for item in value)
        return dataclasses.replace(obj, **changes)

    return project(event)


def _without_defaulted_fields(
    schema: dict[str, Any], keep: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A hypothetical older writer: every optional-with-default field not yet there."""
    older = copy.deepcopy(schema)
    for record in _records(older):
        record["fields"] = [f for f in record["fields"] if "default" not in f or f["name"] in keep]
    return older


def _reordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Same data, other layout: fields reversed in every record, unions in another order."""
    other = copy.deepcopy(schema)
    for record in _records(other):
        record["fields"].reverse()
        for field in record["fields"]:
            if isinstance(field["type"], list):
                field["type"].reverse()
                field.pop("default", None)  # a writer needs none; null is no longer first
    payload = next(f for f in other["fields"] if f["name"] == "payload")
    by_name = {b["name"]: b for b in payload["type"]}
    # MessageSent defines File, which MessageEdited references: keep it the earlier one.
    payload["type"] = [
        by_name[n]
        for n in (
            "ReadConfirmed",
            "DeliveryConfirmed",
            "MessageDeleted",
            "MessageSent",
            "MessageEdited",
            "ChatRenamed",
        )
    ]
    return other


def _with_extra_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """A newer writer: fields this reader has never heard of, in the envelope and a payload."""
    newer = copy.deepcopy(schema)
    newer["fields"].insert(2, {"name": "tenant_region", "type": "string", "default": "eu"})
    newer["fields"].append(
        {"name": "trace", "type": {"type": "map", "values": "bytes"}, "default": {}}
    )
    sent = next(r for r in _records(newer) if r["name"] == "MessageSent")
    sent["fields"].append({"name": "reply_to", "type": ["null", "string"], "default": None})
    return newer


WRITER_VARIANTS = {
    "older-without-optional-fields": _without_defaulted_fields(READER_RAW),
    "older-with-a-bare-user": _without_defaulted_fields(READER_RAW, keep=frozenset({"user"})),
    "reordered-fields-and-unions": _reordered(READER_RAW),
    "newer-with-extra-fields": _with_extra_fields(READER_RAW),
}


def test_the_writer_variants_really_differ_from_the_reader():
    canonical = to_parsing_canonical_form(READER_RAW)
    for name, raw in WRITER_VARIANTS.items():
        assert to_parsing_canonical_form(raw) != canonical, name
    older = _fields_by_record(WRITER_VARIANTS["older-without-optional-fields"])
    assert older["ChatEvent"] == {
        "event_id",
        "portal",
        "connector",
        "line",
        "chat_id",
        "occurred_at",
        "payload",
    }
    assert older["MessageSent"] == {"message_id"}
    assert _fields_by_record(WRITER_VARIANTS["older-with-a-bare-user"])["ExternalUser"] == {"id"}


@pytest.mark.parametrize("variant", list(WRITER_VARIANTS))
def test_a_writer_schema_other_than_the_reader_resolves_into_the_current_model(variant):
    writer = WRITER_VARIANTS[variant]
    registry = FakeRegistry()
    registry.add(2, writer)
    decoder = ChatEventDecoder(registry)
    for name, event in SAMPLES.items():
        decoded = decoder.decode(_confluent(2, _avro(writer, event)))
        assert decoded == _as_written_by(event, writer), name
    if variant.startswith("older"):
        assert decoder.decode(
            _confluent(2, _avro(writer, SAMPLES["sent-full"]))
        ).payload == MessageSent("m2")


def test_an_unreleased_writer_is_not_known_by_fingerprint():
    writer = WRITER_VARIANTS["older-without-optional-fields"]
    value = _single_object(writer, _avro(writer, SAMPLES["deleted"]))
    error = _decode_error(ChatEventDecoder(), value)
    assert (type(error), error.code) == (UnknownSchema, "UNKNOWN_FINGERPRINT")


@pytest.mark.parametrize("version", [v for v, _ in schemas.released_versions()])
def test_every_released_version_as_writer_is_readable_by_the_current_reader(version):
    writer = dict(schemas.released_versions())[version]
    registry = FakeRegistry()
    registry.add(100 + version, writer)
    decoder = ChatEventDecoder(registry)
    for name, event in SAMPLES.items():
        expected = _as_written_by(event, writer)
        body = _avro(writer, event)
        assert decoder.decode(_confluent(100 + version, body)) == expected, name
        assert decoder.decode(_single_object(writer, body)) == expected, name


def test_the_newest_released_version_is_the_reader_and_versions_are_ordered():
    versions = schemas.released_versions()
    assert [v for v, _ in versions] == sorted({v for v, _ in versions})
    assert versions[-1][1] == READER_RAW
    assert ChatEventEncoder().encode(SAMPLES["read"])[2:10] == _single_object(READER_RAW, b"")[2:]


def test_a_writer_missing_a_required_field_is_a_schema_mismatch_not_a_crash():
    writer = copy.deepcopy(READER_RAW)
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "chat_id"]
    registry = FakeRegistry()
    registry.add(3, writer)
    error = _decode_error(ChatEventDecoder(registry), _confluent(3, _avro(writer, SAMPLES["read"])))
    assert (type(error), error.code) == (SchemaMismatch, "AVRO_DECODE")


def test_a_writer_with_an_unknown_payload_branch_fails_only_for_that_branch():
    writer = copy.deepcopy(READER_RAW)
    payload = next(f for f in writer["fields"] if f["name"] == "payload")
    payload["type"].append({"type": "record", "name": "Typing", "fields": []})
    registry = FakeRegistry()
    registry.add(4, writer)
    decoder = ChatEventDecoder(registry)
    assert decoder.decode(_confluent(4, _avro(writer, SAMPLES["renamed"]))) == SAMPLES["renamed"]
    body = _avro(writer, SAMPLES["deleted"])
    assert body.endswith(b"\x06\x04m1")  # payload branch 3 (MessageDeleted), "m1"
    typing = body[:-4] + b"\x0c"  # payload branch 6: Typing, an empty record
    error = _decode_error(decoder, _confluent(4, typing))
    assert (type(error), error.code) == (SchemaMismatch, "AVRO_DECODE")


# -- event_from_json ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_event_from_json_builds_every_kind(name):
    event = SAMPLES[name]
    record = event_to_record(event)
    doc = {
        "portal": event.portal,
        "connector": event.connector,
        "line": str(event.line),
        "chat_id": event.chat_id,
        "sequence": event.sequence,
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
        "user": record["user"],
        "type": event.kind,
        "payload": record["payload"][1],
    }
    assert event_from_json(json.loads(json.dumps(doc))) == event


def test_event_from_json_fills_event_id_and_occurred_at_and_optional_fields():
    before = int(time.time() * 1000)
    event = event_from_json(
        {
            "portal": "p",
            "connector": "c",
            "line": 3,
            "chat_id": 12345,
            "type": "MessageSent",
            "payload": {"message_id": "m1", "text": "hi"},
            "user": {"id": "u1", "name": "Ann"},
        }
    )
    assert uuid.UUID(event.event_id).version == 4
    assert before <= event.occurred_at <= int(time.time() * 1000)
    assert (event.chat_id, event.line, event.sequence) == ("12345", 3, None)
    assert event.payload == MessageSent("m1", "hi")
    assert event.user == ExternalUser(id="u1", name="Ann")
    assert ChatEventDecoder().decode(ChatEventEncoder().encode(event)) == event


@pytest.mark.parametrize("kind", ["MessageSnet", "messagesent", "", None, 5, "ChatEvent"])
def test_event_from_json_rejects_an_unknown_type_naming_the_choices(kind):
    doc = {
        "portal": "p",
        "connector": "c",
        "line": 1,
        "chat_id": "x",
        "type": kind,
        "payload": {"message_id": "m1"},
    }
    with pytest.raises(ValueError, match="'type' must be one of") as caught:
        event_from_json(doc)
    message = str(caught.value)
    assert all(k in message for k in PAYLOAD_KINDS)
    assert repr(kind) in message


def test_event_from_json_without_a_type_says_so():
    with pytest.raises(ValueError, match="got None"):
        event_from_json(
            {
                "portal": "p",
                "connector": "c",
                "line": 1,
                "chat_id": "x",
                "payload": {"message_id": "m1"},
            }
        )


# -- writer schemas from the registry that can kill or hang the decoder --------------------------
#
# The registry is outside this service: any producer can register a new, backward-compatible
# version of the subject. A poison record must never take the process down or stall the
# partition (architecture §3 "decode"), so these run in a child process with a time limit.

_CHILD = """
import json, sys
from consumer.codec import ChatEventDecoder
from consumer.codec.bundle import parse_plain
from consumer.errors import PoisonRecord
spec = json.load(sys.stdin)
class Registry:
    def get_schema(self, schema_id):
        return parse_plain(spec["writer"])
try:
    ChatEventDecoder(Registry()).decode(bytes.fromhex(spec["value"]))
    print("decoded")
except PoisonRecord as exc:
    print(type(exc).__name__, exc.code)
"""


def _decode_in_child(writer: dict[str, Any], value: bytes, timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=json.dumps({"writer": writer, "value": value.hex()}),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"decoding a {len(value)}-byte record did not finish in {timeout:.0f}s")
    assert done.returncode == 0, (
        f"the decoder killed the interpreter (exit {done.returncode}) on a {len(value)}-byte "
        f"record: {done.stderr[-2000:]}"
    )
    return done.stdout.strip()


def _writer_with_field(field: dict[str, Any]) -> dict[str, Any]:
    writer = copy.deepcopy(READER_RAW)
    writer["fields"].append(field)
    return writer


def test_a_recursive_writer_type_is_refused_not_a_segfault():
    """A reply chain would be a backward-compatible addition (the reader skips the field),
    but no public reader bounds its nesting: 200 kB of nesting exhausts the stack. Such a
    writer is refused with the fix in the message, shallow values included."""
    node = {
        "type": "record",
        "name": "Reply",
        "fields": [{"name": "parent", "type": ["null", "Reply"], "default": None}],
    }
    writer = _writer_with_field({"name": "thread", "type": ["null", node], "default": None})
    shallow = _avro(writer, SAMPLES["deleted"])[:-1] + b"\x02" * 50 + b"\x00"
    registry = FakeRegistry()
    registry.add(5, writer)
    with pytest.raises(SchemaMismatch, match="register the writer without recursion"):
        ChatEventDecoder(registry).decode(_confluent(5, shallow))
    deep = _avro(writer, SAMPLES["deleted"])[:-1] + b"\x02" * 200_000 + b"\x00"  # 200 kB
    assert (
        _decode_in_child(writer, _confluent(5, deep)) == "SchemaMismatch UNSUPPORTED_WRITER_SCHEMA"
    )


def test_a_huge_count_of_zero_width_array_items_is_poison_not_a_hang():
    writer = _writer_with_field(
        {"name": "marks", "type": {"type": "array", "items": "null"}, "default": []}
    )
    body = _avro(writer, SAMPLES["deleted"])  # ... payload, then marks: 00 (empty array)
    assert body.endswith(b"\x00")
    value = _confluent(6, body[:-1] + zigzag(2**60) + b"\x00")  # 2^60 nulls in 15 bytes
    assert _decode_in_child(writer, value) == "SchemaMismatch UNSUPPORTED_WRITER_SCHEMA"


def test_a_negative_payload_branch_index_is_poison_not_another_event_kind():
    # The payload union is the last field: its branch index sits right before the
    # payload body. 06 = branch 3 (MessageDeleted); 01 is zigzag -1, no such branch in Avro,
    # yet Python's negative indexing in fastavro picks the last branch (ReadConfirmed).
    event = SAMPLES["deleted"]
    value = ChatEventEncoder().encode(event)
    assert value.endswith(b"\x06\x04m1")  # payload branch 3 (MessageDeleted), "m1"
    at = len(value) - 4
    for decoder in (ChatEventDecoder(), ChatEventDecoder(fast=False)):
        for wrong in (b"\x01", b"\x03", b"\x05"):  # -1, -2, -3
            corrupt = value[:at] + wrong + value[at + 1 :]
            error = _decode_error(decoder, corrupt)
            assert (type(error), error.code) in {
                (SchemaMismatch, "NON_CANONICAL"),
                (SchemaMismatch, "AVRO_DECODE"),
            }
        assert decoder.decode(value) == event


def test_a_negative_index_on_an_optional_field_is_poison_too():
    # On a two-branch ["null", T] union, fastavro's -1 selects T exactly as 1 does, so the
    # decoded event would be the one written; it was accepted while only the payload was
    # re-encoded. No Avro writer produces a negative index, and the generated reader is
    # strict on every union, so both paths refuse it.
    event = SAMPLES["sent-full"]
    offset = (
        sum(1 + len(text) for text in (event.event_id, event.portal, event.connector))
        + 1
        + 1
        + len(event.chat_id)
    )
    assert BODY[offset : offset + 2] == b"\x02\x02"  # union branch 1, sequence = 1
    corrupt = VALID[:10] + BODY[:offset] + b"\x01" + BODY[offset + 1 :]
    for decoder in (ChatEventDecoder(), ChatEventDecoder(fast=False)):
        error = _decode_error(decoder, corrupt)
        assert (type(error), error.code) == (SchemaMismatch, "NON_CANONICAL")
    assert ChatEventDecoder().decode(VALID) == event


def test_a_record_truncated_inside_a_skipped_writer_field_is_poison():
    writer = _writer_with_field({"name": "attachment", "type": "bytes", "default": ""})
    registry = FakeRegistry()
    registry.add(8, writer)
    decoder = ChatEventDecoder(registry)
    body = _avro(writer, SAMPLES["deleted"], attachment=b"")
    assert body.endswith(b"\x00")  # the empty `attachment`
    assert decoder.decode(_confluent(8, body)) == SAMPLES["deleted"]
    truncated = body[:-1] + zigzag(1000) + b"only a few bytes"  # declares 1000, has 16
    error = _decode_error(decoder, _confluent(8, truncated))
    assert error.code in {"AVRO_DECODE", "TRUNCATED"}
