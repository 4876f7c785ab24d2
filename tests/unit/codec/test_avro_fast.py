"""The generated reader (`consumer.codec.avro_fast`) against the fastavro path it replaces for the
bundled reader's own records: the same `ChatEvent` for every valid record, poison for every
corrupt one, and each strictness rule with the code it gives.

`ChatEventDecoder()` takes the generated reader for single-object records of the newest
version; `ChatEventDecoder(fast=False)` reads the same bytes with fastavro and proves them
canonical by re-encoding: the reference. Starts nothing; the fuzz is seeded.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.codec import ChatEventDecoder, ChatEventEncoder
from consumer.codec.avro_fast import UnsupportedSchema, compile_reader, generate_source
from consumer.codec.bundle import get_bundle
from consumer.core.events import (
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
from consumer.demo.workload import Mix, chat_script
from consumer.errors import PoisonRecord, SchemaMismatch
from tests.avro_bytes import zigzag

FAST = ChatEventDecoder()
SLOW = ChatEventDecoder(fast=False)
ENCODER = ChatEventEncoder("single-object")
HEADER = ENCODER.encode(ChatEvent("e", "p", "c", 1, "x", 1, MessageDeleted("m")))[:10]

FUZZ_SEED = 0xFA57
FUZZ_CASES = 25_000

INT32_EDGES = (-(2**31), -(2**31) + 1, -65, -64, -1, 0, 63, 64, 8191, 8192, 2**31 - 1)
INT64_EDGES = (
    -(2**63),
    -(2**63) + 1,
    -(2**31) - 1,
    -(2**31),
    -1,
    0,
    1,
    2**31 - 1,
    2**31,
    2**32,
    2**56,
    2**63 - 1,
)


def _outcome(decoder: ChatEventDecoder, value: bytes) -> ChatEvent | PoisonRecord:
    try:
        return decoder.read(value)  # the bytes as written; `decode` also normalises
    except PoisonRecord as exc:
        return exc


def _both(value: bytes) -> ChatEvent:
    """The event both paths decode `value` to (they must agree)."""
    fast = FAST.read(value)  # the bytes as written; `decode` also normalises
    assert fast == SLOW.read(value)
    return fast


# -- valid records: the same ChatEvent --------------------------------------------------------


def test_the_bundled_reader_has_a_generated_reader_and_the_default_decoder_uses_it():
    # if the newest schema ever used a type the generator lacks, decoding would silently
    # fall back to fastavro at a third of the speed: this makes that a visible decision
    assert get_bundle().fast_reader is not None
    assert FAST._fast_reader is get_bundle().fast_reader
    assert SLOW._fast_reader is None


def test_every_event_of_the_workload_decodes_the_same_on_both_paths():
    rng = random.Random(20_240_611)
    events: list[ChatEvent] = []
    for chat in range(60):
        events += chat_script(
            rng,
            f"portal-{chat % 3}",
            "tg_conn",
            rng.choice((1, 7, 2**31 - 1)),
            f"chat-{chat}-Ω",
            rng.randint(1, 40),
            mix=Mix(send=30, edit=15, delete=10, rename=15, delivery=15, read=15),
            with_sequence=chat % 4 != 0,
            start_ms=1_764_000_000_000 + chat,
        )
    assert {e.kind for e in events} == {
        "MessageSent",
        "MessageEdited",
        "MessageDeleted",
        "ChatRenamed",
        "DeliveryConfirmed",
        "ReadConfirmed",
    }
    for event in events:
        assert _both(ENCODER.encode(event)) == event


TEXT = st.text(max_size=40)  # any code point but surrogates: 1-4 UTF-8 bytes each
LONG_TEXT = st.text(min_size=60, max_size=200)  # a length varint of two bytes
OPTIONAL_TEXT = st.none() | TEXT
INT32 = st.sampled_from(INT32_EDGES) | st.integers(-(2**31), 2**31 - 1)
INT64 = st.sampled_from(INT64_EDGES) | st.integers(-(2**63), 2**63 - 1)
FILES = st.lists(st.builds(File, url=TEXT | LONG_TEXT, name=OPTIONAL_TEXT), max_size=3).map(tuple)
MESSAGE_IDS = st.lists(TEXT, max_size=3).map(tuple)
PAYLOADS = st.one_of(
    st.builds(
        MessageSent,
        message_id=TEXT,
        text=OPTIONAL_TEXT | LONG_TEXT,
        files=FILES,
        chat_name=OPTIONAL_TEXT,
        chat_url=OPTIONAL_TEXT,
        disable_crm=st.booleans(),
        operator_id=st.none() | INT32,
    ),
    st.builds(MessageEdited, message_id=TEXT, text=OPTIONAL_TEXT, files=FILES),
    st.builds(MessageDeleted, message_id=TEXT),
    st.builds(ChatRenamed, name=TEXT | LONG_TEXT),
    st.builds(
        DeliveryConfirmed,
        im_chat_id=INT64,
        im_message_id=INT64,
        message_ids=MESSAGE_IDS,
        delivered_at=st.none() | INT64,
    ),
    st.builds(ReadConfirmed, im_chat_id=INT64, im_message_id=INT64, message_ids=MESSAGE_IDS),
)
USERS = st.none() | st.builds(
    ExternalUser,
    id=TEXT,
    name=OPTIONAL_TEXT,
    last_name=OPTIONAL_TEXT,
    picture_url=OPTIONAL_TEXT,
    url=OPTIONAL_TEXT,
    gender=OPTIONAL_TEXT,
    email=OPTIONAL_TEXT,
    phone=OPTIONAL_TEXT,
)
EVENTS = st.builds(
    ChatEvent,
    event_id=TEXT,
    portal=TEXT,
    connector=TEXT,
    line=INT32,
    chat_id=TEXT | LONG_TEXT,
    occurred_at=INT64,
    payload=PAYLOADS,
    sequence=st.none() | INT64,
    user=USERS,
)


@settings(max_examples=400, deadline=None)
@given(EVENTS)
def test_any_event_decodes_the_same_on_both_paths(event):
    assert _both(ENCODER.encode(event)) == event


def test_long_arrays_and_strings_take_multi_byte_counts_and_lengths():
    files = tuple(File(f"https://f.example/{i}", None if i % 2 else f"{i}.png") for i in range(70))
    for payload in (
        MessageSent("m", "ж" * 5000, files=files),
        MessageEdited("m", None, files=files[:64]),
        DeliveryConfirmed(-1, 2**40, tuple(f"op-{i}" for i in range(300))),
        ReadConfirmed(0, 0, ("",) * 64),
    ):
        event = ChatEvent("e" * 64, "p", "c", 2**31 - 1, "x" * 8192, 2**63 - 1, payload)
        assert _both(ENCODER.encode(event)) == event


# -- corrupt records: the strictness rules one by one -------------------------------------------

# MessageSent with one file, sequence 1, operator 5: every field is a separate piece below,
# so each case replaces exactly one piece with a corrupt encoding.
PIECES: dict[str, bytes] = {
    "event_id": b"\x02e",
    "portal": b"\x02p",
    "connector": b"\x02c",
    "line": b"\x0e",  # 7
    "chat_id": b"\x02x",
    "sequence": b"\x02\x02",  # branch 1 (long), 1
    "occurred_at": b"\x02",  # 1
    "user": b"\x00",  # branch 0 (null)
    "payload_index": b"\x02",  # branch 1 (MessageSent)
    "message_id": b"\x04m1",
    "text": b"\x00",
    "files": b"\x02\x02u\x00\x00",  # one block of 1: File(url="u", name=None), then 0
    "chat_name": b"\x00",
    "chat_url": b"\x00",
    "disable_crm": b"\x00",
    "operator_id": b"\x02\x0a",  # branch 1 (int), 5
}
PIECES_EVENT = ChatEvent(
    event_id="e",
    portal="p",
    connector="c",
    line=7,
    chat_id="x",
    occurred_at=1,
    payload=MessageSent("m1", files=(File("u"),), operator_id=5),
    sequence=1,
)


def _record(tail: bytes = b"", **pieces: bytes) -> bytes:
    assert set(pieces) <= set(PIECES)
    return HEADER + b"".join(pieces.get(name, piece) for name, piece in PIECES.items()) + tail


def test_the_pieces_are_the_encoding_of_their_event():
    assert _record() == ENCODER.encode(PIECES_EVENT)
    assert _both(_record()) == PIECES_EVENT


CORRUPT: list[tuple[str, bytes, str]] = [
    # overlong (non-minimal) varints: a smaller number in more bytes
    ("overlong int", _record(line=b"\x8e\x00"), "NON_CANONICAL"),
    ("overlong long", _record(occurred_at=b"\x82\x80\x00"), "NON_CANONICAL"),
    ("overlong string length", _record(event_id=b"\x82\x00e"), "NON_CANONICAL"),
    ("overlong union index", _record(sequence=b"\x82\x00\x02"), "NON_CANONICAL"),
    ("overlong payload index", _record(payload_index=b"\x82\x00"), "NON_CANONICAL"),
    ("overlong array count", _record(files=b"\x82\x00\x02u\x00\x00"), "NON_CANONICAL"),
    ("overlong array end", _record(files=b"\x02\x02u\x00\x80\x00"), "NON_CANONICAL"),
    ("overlong zero", _record(line=b"\x80\x80\x00"), "NON_CANONICAL"),
    # varints past 64 bits
    ("varint of 11 bytes", _record(occurred_at=b"\xff" * 10 + b"\x01"), "AVRO_DECODE"),
    ("varint of 20 bytes", _record(occurred_at=b"\x80" * 19 + b"\x01"), "AVRO_DECODE"),
    ("10-byte varint over 64 bits", _record(occurred_at=b"\xff" * 9 + b"\x02"), "AVRO_DECODE"),
    # union indexes: negative (fastavro would index from the end) or past the last branch
    ("negative optional index", _record(sequence=b"\x01\x02"), "NON_CANONICAL"),
    ("index -2 on an optional", _record(sequence=b"\x03\x02"), "NON_CANONICAL"),
    ("negative user index", _record(user=b"\x01\x02u" + b"\x00" * 7), "NON_CANONICAL"),
    ("negative payload index", _record(payload_index=b"\x01"), "NON_CANONICAL"),
    ("payload index -6", _record(payload_index=b"\x0b"), "NON_CANONICAL"),
    ("payload index -64", _record(payload_index=b"\x7f"), "NON_CANONICAL"),
    ("optional index 2", _record(sequence=b"\x04\x02"), "AVRO_DECODE"),
    ("payload index 6", _record(payload_index=b"\x0c"), "AVRO_DECODE"),
    ("payload index 64", _record(payload_index=b"\x80\x01"), "AVRO_DECODE"),
    ("payload index 2^62", _record(payload_index=zigzag(2**62)), "AVRO_DECODE"),
    # ints outside 32 bits (a long's varint in an int field)
    ("int 2^31", _record(line=zigzag(2**31)), "AVRO_DECODE"),
    ("int -2^31-1", _record(line=zigzag(-(2**31) - 1)), "AVRO_DECODE"),
    ("int 2^62", _record(line=zigzag(2**62)), "AVRO_DECODE"),
    ("optional int 2^31", _record(operator_id=b"\x02" + zigzag(2**31)), "AVRO_DECODE"),
    # lengths: negative, past the end, huge (the record is ~40 bytes)
    ("negative string length", _record(event_id=b"\x01e"), "AVRO_DECODE"),
    ("string length -2^63", _record(event_id=zigzag(-(2**63)) + b"e"), "AVRO_DECODE"),
    ("string past the end", _record(chat_id=b"\x7ex"), "AVRO_DECODE"),
    ("string length 2^62", _record(portal=zigzag(2**62) + b"p"), "AVRO_DECODE"),
    ("string length 2^63-1", _record(portal=zigzag(2**63 - 1) + b"p"), "AVRO_DECODE"),
    ("array count 2^60", _record(files=zigzag(2**60) + b"\x02u\x00\x00"), "AVRO_DECODE"),
    ("array count -2^60", _record(files=zigzag(-(2**60)) + b"\x02u\x00\x00"), "AVRO_DECODE"),
    ("array count past the end", _record(files=b"\x7e\x02u\x00\x00"), "AVRO_DECODE"),
    # strings that are not UTF-8
    ("invalid start byte", _record(event_id=b"\x02\xff"), "AVRO_DECODE"),
    ("lone continuation byte", _record(message_id=b"\x04m\x80"), "AVRO_DECODE"),
    ("cut multi-byte char", _record(chat_id=b"\x02\xd0"), "AVRO_DECODE"),
    ("overlong UTF-8 NUL", _record(chat_id=b"\x04\xc0\x80"), "AVRO_DECODE"),
    ("UTF-16 surrogate", _record(chat_id=b"\x06\xed\xa0\x80"), "AVRO_DECODE"),
    ("past U+10FFFF", _record(chat_id=b"\x08\xf4\x90\x80\x80"), "AVRO_DECODE"),
    # booleans other than 0 and 1
    ("boolean 2", _record(disable_crm=b"\x02"), "NON_CANONICAL"),
    ("boolean 0xff", _record(disable_crm=b"\xff"), "NON_CANONICAL"),
    # array blocks fastavro's writer never writes
    ("negative block count", _record(files=b"\x01\x06\x02u\x00\x00"), "NON_CANONICAL"),
    ("second block", _record(files=b"\x02\x02u\x00\x02\x02v\x00\x00"), "NON_CANONICAL"),
    ("empty block before the end", _record(files=b"\x02\x02u\x00\x01\x00\x00"), "NON_CANONICAL"),
    # framing of the datum as a whole
    ("trailing zero", _record(tail=b"\x00"), "TRAILING_BYTES"),
    ("trailing record", _record(tail=_record()[10:]), "TRAILING_BYTES"),
    ("cut in the last varint", _record()[:-1], "AVRO_DECODE"),
    ("cut inside a string", _record()[:11], "AVRO_DECODE"),
    ("cut inside a multi-byte varint", _record(occurred_at=b"\x82\x80\x01")[:-17], "AVRO_DECODE"),
    ("header only", _record()[:10], "AVRO_DECODE"),
]


@pytest.mark.parametrize(("value", "code"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_each_corrupt_encoding_is_poison_on_both_paths(value, code):
    fast = _outcome(FAST, value)
    slow = _outcome(SLOW, value)
    assert isinstance(fast, SchemaMismatch), fast
    assert fast.code == code, str(fast)
    assert str(fast)
    assert isinstance(slow, SchemaMismatch), slow


def test_the_corrupt_table_covers_every_rule_of_the_generated_reader():
    messages = {str(_outcome(FAST, value)).split(" at byte")[0] for _, value, _ in CORRUPT}
    expected_starts = (
        "overlong varint",
        "varint",  # "... is longer than 10 bytes" / "... exceeds 64 bits"
        "negative union index",
        "union index",
        "int ",
        "string length",
        "array block of",
        "array block with a negative count",
        "array continues with a second block",
        "boolean byte",
        "Avro decoding failed: UnicodeDecodeError",
        "the Avro datum ends before its last field",
        "1 trailing bytes",
    )
    for start in expected_starts:
        assert any(m.startswith(start) for m in messages), start


@pytest.mark.parametrize(
    "pieces",
    [
        {"line": zigzag(2**31 - 1)},
        {"line": zigzag(-(2**31))},
        {"operator_id": b"\x02" + zigzag(-(2**31))},
        {"occurred_at": zigzag(2**63 - 1)},
        {"occurred_at": zigzag(-(2**63))},
        {"sequence": b"\x02" + zigzag(-(2**63))},
        {"sequence": b"\x00"},
        {"disable_crm": b"\x01"},
        {"files": b"\x00"},
        {"user": b"\x02\x02u" + b"\x00" * 7},
    ],
    ids=repr,
)
def test_the_edges_of_what_is_valid_decode_on_both_paths(pieces):
    value = _record(**pieces)
    event = _both(value)
    assert ENCODER.encode(event) == value


# -- the differential fuzz ----------------------------------------------------------------------

INTERESTING = (0, 1, -1, 63, 64, -64, -65, 2**31 - 1, 2**31, -(2**31) - 1, 2**62, 2**63 - 1)


def _fuzz_bases() -> list[bytes]:
    rng = random.Random(FUZZ_SEED)
    events: list[ChatEvent] = [PIECES_EVENT]
    for chat in range(12):
        events += chat_script(
            rng, "b24", "tg", 7, f"chat-{chat}", 12, start_ms=1_764_000_000_000 + chat
        )
    events.append(
        ChatEvent(
            event_id="f" * 36,
            portal="Портал",
            connector="c",
            line=-(2**31),
            chat_id="🙂",
            occurred_at=-(2**63),
            payload=MessageSent(
                "m", "t", (File("a", "b"), File("c")), "n", "u", disable_crm=True, operator_id=-1
            ),
            sequence=2**63 - 1,
            user=ExternalUser("u", "a", "b", "c", "d", "e", "f", "g"),
        )
    )
    events.append(
        ChatEvent("e", "p", "c", 1, "x", 1, DeliveryConfirmed(-(2**63), 2**63 - 1, ("a", "b"), 0))
    )
    return [ENCODER.encode(e) for e in events]


def _mutate(rng: random.Random, base: bytes) -> bytes:
    body = bytearray(base[10:])
    kind = rng.randrange(9)
    at = rng.randrange(len(body))
    if kind == 0:  # bit flips
        for _ in range(rng.choice((1, 1, 2, 3))):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # one byte overwritten, often with a varint-significant value
        body[at] = rng.choice((0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0x81, 0xFF, rng.randrange(256)))
    elif kind == 2:  # bytes inserted
        body[at:at] = rng.choice((b"\x00", b"\x80", b"\x01", rng.randbytes(rng.randint(1, 4))))
    elif kind == 3:  # bytes deleted
        del body[at : at + rng.randint(1, 3)]
    elif kind == 4:  # truncation
        del body[at:]
    elif kind == 5:  # a one-byte varint rewritten as an overlong one of the same value
        if body[at] < 0x80:
            body[at : at + 1] = bytes([body[at] | 0x80]) + b"\x80" * rng.randint(0, 2) + b"\x00"
    elif kind == 6:  # a varint replaced with an interesting number (same or other width)
        body[at : at + rng.randint(1, 2)] = zigzag(rng.choice(INTERESTING))
    elif kind == 7:  # an even byte (a union index, a length) turned odd: negative
        if body[at] < 0x80:
            body[at] ^= 1
    else:  # garbage appended
        body += rng.randbytes(rng.randint(1, 8))
    return base[:10] + bytes(body)


def test_25k_mutated_records_get_the_same_verdict_on_both_paths():
    rng = random.Random(FUZZ_SEED)
    bases = _fuzz_bases()
    verdicts: Counter[str] = Counter()
    disagreements: list[str] = []
    for _ in range(FUZZ_CASES):
        value = _mutate(rng, rng.choice(bases))
        fast = _outcome(FAST, value)
        slow = _outcome(SLOW, value)
        if isinstance(fast, ChatEvent):
            verdicts["decoded"] += 1
            # strict by construction: whatever the generated reader accepts is exactly
            # what the encoder writes for the event it decoded to
            if fast != slow or ENCODER.encode(fast) != value:
                disagreements.append(f"fast decoded, slow {slow!r}: {value.hex()}")
        else:
            verdicts[str(fast.code)] += 1
            if not isinstance(fast, SchemaMismatch) or not isinstance(slow, PoisonRecord):
                disagreements.append(f"fast {fast!r}, slow {slow!r}: {value.hex()}")
    print(f"\n{FUZZ_CASES} mutants: {dict(verdicts.most_common())}")
    assert not disagreements, "\n".join(disagreements[:20])
    assert sum(verdicts.values()) == FUZZ_CASES
    # the mutants reach every verdict, and enough of them stay valid to compare events
    assert {"decoded", "AVRO_DECODE", "NON_CANONICAL", "TRAILING_BYTES"} <= set(verdicts)
    assert verdicts["decoded"] > FUZZ_CASES // 50


# -- the generator on its own -------------------------------------------------------------------


def _schema(*fields: dict[str, Any]) -> Any:
    return fastavro.parse_schema({"type": "record", "name": "T", "fields": list(fields)})


def test_a_small_schema_reads_what_fastavro_writes():
    schema = _schema(
        {"name": "a", "type": "int"},
        {"name": "b", "type": {"type": "array", "items": ["null", "string", "long"]}},
        {"name": "c", "type": ["null", {"type": "record", "name": "U", "fields": []}]},
        {"name": "d", "type": "boolean"},
    )
    reader = compile_reader(schema, {"T": dict, "U": lambda: "U"})
    datum = {"a": -5, "b": [None, "ö", 2**40], "c": {}, "d": True}
    out = _write(schema, datum)
    assert reader(out, 0) == ({**datum, "b": (None, "ö", 2**40), "c": "U"}, len(out))
    assert "def read(buf, pos):" in generate_source(schema, {"T": dict, "U": dict})


def _write(schema: Any, datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


@pytest.mark.parametrize(
    "field_type",
    [
        "bytes",
        "float",
        "double",
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "map", "values": "string"},
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "array", "items": "null"},
        {"type": "array", "items": {"type": "record", "name": "Empty", "fields": []}},
        ["null", "bytes"],
    ],
    ids=repr,
)
def test_a_type_the_generator_lacks_is_unsupported_so_the_caller_keeps_fastavro(field_type):
    schema = _schema({"name": "x", "type": field_type})
    with pytest.raises(UnsupportedSchema):
        compile_reader(schema, {"T": dict, "Empty": dict})


def test_a_recursive_schema_is_unsupported():
    schema = _schema({"name": "next", "type": ["null", "T"]})
    with pytest.raises(UnsupportedSchema, match="recursive"):
        compile_reader(schema, {"T": dict})


def test_every_record_needs_a_constructor_that_takes_its_fields():
    schema = _schema({"name": "a", "type": "int"})
    with pytest.raises(UnsupportedSchema, match="no constructor"):
        compile_reader(schema, {})
    with pytest.raises(UnsupportedSchema, match="does not take its fields"):
        compile_reader(schema, {"T": lambda b: b})
    with pytest.raises(UnsupportedSchema, match="does not take its fields"):
        compile_reader(schema, {"T": lambda a, b: a})


def test_a_field_name_that_is_not_an_identifier_never_becomes_code():
    schema = {
        "type": "record",
        "name": "T",
        "fields": [{"name": "class", "type": "int"}],
        "__fastavro_parsed": True,
    }
    with pytest.raises(UnsupportedSchema, match="not a Python identifier"):
        compile_reader(schema, {"T": dict})
    schema["fields"] = [{"name": "a=__import__('os')", "type": "int"}]
    with pytest.raises(UnsupportedSchema, match="not a Python identifier"):
        compile_reader(schema, {"T": dict})
