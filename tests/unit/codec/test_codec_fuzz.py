"""Fuzzing the decoder: whatever bytes arrive, `ChatEventDecoder.decode` returns a `ChatEvent`
or raises a `PoisonRecord` subclass with a code — never another exception, never a hang, and
never memory that grows with what a corrupt header claims rather than with what arrived.

A seeded `random.Random` drives 100,000 payloads so a failure reproduces exactly; each failure
is reported with the payload's hex.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import random
import struct
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

import consumer.codec.decoder as codec
import schemas
from consumer.codec import ChatEventDecoder, ChatEventEncoder, event_to_record
from consumer.codec.bundle import parse_plain
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
from consumer.errors import (
    PoisonRecord,
    RegistryUnavailable,
    SchemaMismatch,
    UnknownSchema,
    UnknownWireFormat,
)
from tests.avro_bytes import zigzag

SEED = 0x1C0DEC
PAYLOADS = 100_000
# No timing asserts here: how fast the decoder is belongs in a benchmark, and wall time on a
# shared 2-core machine is noise. A decode that hangs is caught by the test timeouts instead.
HANG_TIMEOUT_S = 300
MEMORY_GROWTH_BYTES = 5 * 1024 * 1024

READER_RAW: dict[str, Any] = schemas.released_versions()[-1][1]
POISON_CLASSES = (UnknownWireFormat, UnknownSchema, SchemaMismatch)
CODES = {
    UnknownWireFormat: {"EMPTY", "UNKNOWN_MAGIC", "TRUNCATED"},
    UnknownSchema: {"UNKNOWN_FINGERPRINT", "UNKNOWN_SCHEMA_ID"},
    SchemaMismatch: {
        "AVRO_DECODE",
        "TRAILING_BYTES",
        "TOO_LARGE",
        "UNKNOWN_PAYLOAD",
        "NON_CANONICAL",
    },
}
BUNDLED_FINGERPRINTS = {
    bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    for _, raw in schemas.released_versions()
}
HUGE = (2**60, -(2**60), 2**62, 2**63 - 1, -(2**63), 2**31, -1)


class FakeRegistry:
    """Confluent registry stand-in: known ids parse, others are `UNKNOWN_SCHEMA_ID`."""

    def __init__(self, known: dict[int, dict[str, Any]]) -> None:
        self.schemas = {schema_id: parse_plain(raw) for schema_id, raw in known.items()}

    def get_schema(self, schema_id: int) -> Any:
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise UnknownSchema(
                f"schema id {schema_id} is unknown", code="UNKNOWN_SCHEMA_ID"
            ) from None


def _older_writer() -> dict[str, Any]:
    """v1 without any optional-with-default field: what an older producer may still send."""
    older = copy.deepcopy(READER_RAW)
    stack: list[Any] = [older]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("type") == "record":
                node["fields"] = [f for f in node["fields"] if "default" not in f]
                stack.extend(f["type"] for f in node["fields"])
            else:
                stack.extend(v for k, v in node.items() if k in {"type", "items"})
    return older


OLDER_RAW = _older_writer()
REGISTRY_IDS = {1: READER_RAW, 2: OLDER_RAW}


def _events() -> list[ChatEvent]:
    user = ExternalUser(id="u-1", name="Анна", last_name="Иванова", email="a@example.com")
    payloads = [
        MessageSent("m1"),
        MessageSent(
            "m2",
            "Hello 👋",
            files=(File("https://f.example/a.png", "a.png"), File("https://f.example/b")),
            chat_name="Support",
            chat_url="https://t.me/x",
            disable_crm=True,
            operator_id=42,
        ),
        MessageEdited("m1", "fixed", files=(File("https://f.example/c"),)),
        MessageDeleted("m1"),
        ChatRenamed("VIP customer"),
        DeliveryConfirmed(4242, 777, ("op-1", "op-2"), 1_764_000_009_000),
        ReadConfirmed(4242, 777, ("op-1",)),
    ]
    return [
        ChatEvent(
            event_id=f"0000000{i}-0000-4000-8000-000000000000",
            portal="b24-0f3a",
            connector="tg",
            line=7,
            chat_id=f"chat-{i}",
            occurred_at=1_764_000_000_000 + i,
            payload=payload,
            sequence=i if i % 2 else None,
            user=user if i % 3 else None,
        )
        for i, payload in enumerate(payloads)
    ]


def _bases() -> list[tuple[bytes, int]]:
    """Valid records in every framing, with the length of their header."""
    out: list[tuple[bytes, int]] = []
    single = ChatEventEncoder("single-object")
    older = fastavro.parse_schema(copy.deepcopy(OLDER_RAW))
    for event in _events():
        out.append((single.encode(event), 10))
        body = single.encode(event)[10:]
        out.append((b"\x00" + struct.pack(">I", 1) + body, 5))
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, older, event_to_record(event))
        out.append((b"\x00" + struct.pack(">I", 2) + buffer.getvalue(), 5))
    return out


BASES = _bases()

Mutation = tuple[bytes, str | None]  # the payload and, where it is certain, the expected code


def _framing_code(value: bytes) -> str | None:
    """The code a header-level problem must give; None when the header is complete."""
    if not value:
        return "EMPTY"
    if value[0] == 0:
        return "TRUNCATED" if len(value) < 5 else None
    if value[:2] == b"\xc3\x01":
        return "TRUNCATED" if len(value) < 10 else None
    return "UNKNOWN_MAGIC"


def bit_flips(rng: random.Random, base: bytes, header: int) -> Mutation:
    data = bytearray(base)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data), None


def byte_overwrites(rng: random.Random, base: bytes, header: int) -> Mutation:
    data = bytearray(base)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(header, len(data))] = rng.choice(
            (0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256))
        )
    return bytes(data), None


def truncation(rng: random.Random, base: bytes, header: int) -> Mutation:
    length = rng.choice(
        (
            0,
            1,
            rng.randint(2, 4),
            rng.randint(5, 9),
            header,
            rng.randint(header, len(base) - 1),
            len(base) - 1,
        )
    )
    value = base[:length]
    # every complete header followed by a strict prefix of a valid datum runs out of bytes
    return value, _framing_code(value) or "AVRO_DECODE"


def wrong_magic(rng: random.Random, base: bytes, header: int) -> Mutation:
    if rng.random() < 0.5:
        first = rng.choice([b for b in range(256) if b not in (0x00, 0xC3)])
        return bytes([first]) + base[1:], "UNKNOWN_MAGIC"
    second = rng.choice([b for b in range(256) if b != 0x01])
    return b"\xc3" + bytes([second]) + base[2:], "UNKNOWN_MAGIC"


def wrong_fingerprint(rng: random.Random, base: bytes, header: int) -> Mutation:
    fp = rng.randbytes(8)
    while fp in BUNDLED_FINGERPRINTS:
        fp = rng.randbytes(8)
    return b"\xc3\x01" + fp + base[header:], "UNKNOWN_FINGERPRINT"


def unknown_schema_id(rng: random.Random, base: bytes, header: int) -> Mutation:
    schema_id = rng.choice((0, 3, 2**31, 2**32 - 1, rng.randrange(2**32)))
    while schema_id in REGISTRY_IDS:
        schema_id = rng.randrange(2**32)
    return b"\x00" + struct.pack(">I", schema_id) + base[header:], "UNKNOWN_SCHEMA_ID"


def huge_varint(rng: random.Random, base: bytes, header: int) -> Mutation:
    varint = rng.choice(
        (zigzag(rng.choice(HUGE)), b"\xff" * 10 + b"\x01", b"\xff" * 20, b"\x80" * 9)
    )
    at = rng.randrange(header, len(base))
    if rng.random() < 0.5:
        return base[:at] + varint + base[at:], None
    return base[:at] + varint + base[at + rng.randint(1, 3) :], None


def huge_first_length(rng: random.Random, base: bytes, header: int) -> Mutation:
    # The datum opens with event_id: a 36-character string (length byte 0x48).
    assert base[header] == 0x48
    size = rng.choice(HUGE)
    return base[:header] + zigzag(size) + base[header + 37 :], "AVRO_DECODE"


def random_bytes(rng: random.Random, base: bytes, header: int) -> Mutation:
    value = rng.randbytes(rng.choice((1, 2, 5, 10, rng.randint(0, 200))))
    code = _framing_code(value)
    return value, code if code in {"EMPTY", "UNKNOWN_MAGIC", "TRUNCATED"} else None


def valid_header_random_body(rng: random.Random, base: bytes, header: int) -> Mutation:
    return base[:header] + rng.randbytes(rng.randint(0, 120)), None


def appended_garbage(rng: random.Random, base: bytes, header: int) -> Mutation:
    return base + rng.randbytes(rng.randint(1, 40)), "TRAILING_BYTES"


def splice(rng: random.Random, base: bytes, header: int) -> Mutation:
    at = rng.randrange(header, len(base))
    if rng.random() < 0.5:
        return base[:at] + base[at + rng.randint(1, 8) :], None
    return base[:at] + rng.randbytes(rng.randint(1, 8)) + base[at:], None


MUTATORS: list[Callable[[random.Random, bytes, int], Mutation]] = [
    bit_flips,
    bit_flips,
    byte_overwrites,
    truncation,
    wrong_magic,
    wrong_fingerprint,
    unknown_schema_id,
    huge_varint,
    huge_varint,
    huge_first_length,
    random_bytes,
    valid_header_random_body,
    valid_header_random_body,
    appended_garbage,
    splice,
]


def _check(decoder: ChatEventDecoder, value: bytes, expected: str | None) -> str:
    """Decode once; the outcome's name ("decoded" or the code), or raise AssertionError."""
    try:
        event = decoder.decode(value)
    except PoisonRecord as exc:
        assert type(exc) in POISON_CLASSES, f"{type(exc).__name__} is no known poison class"
        assert exc.code in CODES[type(exc)], f"{type(exc).__name__} with code {exc.code!r}"
        assert expected is None or exc.code == expected, f"{exc.code} instead of {expected}"
        return str(exc.code)
    assert isinstance(event, ChatEvent)
    assert expected is None, f"decoded, but {expected} was expected"
    return "decoded"


@pytest.mark.timeout(HANG_TIMEOUT_S)
def test_100k_random_and_mutated_payloads_give_only_poison_and_in_flat_memory():
    rng = random.Random(SEED)
    decoder = ChatEventDecoder(FakeRegistry(REGISTRY_IDS))
    per_mutator: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    def run(count: int) -> None:
        for _ in range(count):
            base, header = rng.choice(BASES)
            mutate = rng.choice(MUTATORS)
            value, expected = mutate(rng, base, header)
            per_mutator[mutate.__name__] += 1
            try:
                outcomes[_check(decoder, value, expected)] += 1
            except Exception as exc:  # noqa: BLE001 - collected with the input that caused it
                if len(failures) < 20:
                    failures.append(
                        f"{mutate.__name__}: {type(exc).__name__}: {exc} <- {value[:300].hex()}"
                    )

    run(2_000)  # warm-up: fastavro's and the decoder's caches settle before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        started = time.monotonic()
        run(PAYLOADS - 2_000)
        duration = time.monotonic() - started
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(
        f"\n{PAYLOADS} payloads in {duration:.1f}s (traced); "
        f"memory {before} -> {after} B, peak +{peak - before} B; "
        f"outcomes {dict(outcomes.most_common())}"
    )
    assert not failures, "\n".join(failures)
    assert sum(outcomes.values()) == PAYLOADS
    assert after - before < MEMORY_GROWTH_BYTES
    assert peak - before < 4 * MEMORY_GROWTH_BYTES
    # the generator really reaches every way of failing, and some mutants still decode
    assert set(per_mutator) == {m.__name__ for m in MUTATORS}
    assert {
        "EMPTY",
        "UNKNOWN_MAGIC",
        "TRUNCATED",
        "UNKNOWN_FINGERPRINT",
        "UNKNOWN_SCHEMA_ID",
        "AVRO_DECODE",
        "TRAILING_BYTES",
        "decoded",
    } <= set(outcomes)


# -- huge declared lengths: the header's claim must not become an allocation -------------------


def _huge_targets() -> dict[str, tuple[bytes, bytes]]:
    """(prefix, suffix) around a length varint, per field, in valid single-object records."""
    encoder = ChatEventEncoder("single-object")
    sent = ChatEvent(
        event_id="e",
        portal="p",
        connector="c",
        line=1,
        chat_id="x",
        occurred_at=1,
        payload=MessageSent("m1"),
    )
    value = encoder.encode(sent)
    files_at = value.index(b"\x04m1\x00") + 4  # message_id "m1", text null, then files
    delivered = encoder.encode(
        ChatEvent(
            event_id="e",
            portal="p",
            connector="c",
            line=1,
            chat_id="x",
            occurred_at=1,
            payload=DeliveryConfirmed(1, 2, ()),
        )
    )
    assert delivered.endswith(b"\x00\x00")  # message_ids: empty array, delivered_at: null
    return {
        "event_id string": (value[:10], value[12:]),
        "portal string": (value[:12], value[14:]),
        "message_id string": (value[: files_at - 4], value[files_at - 1 :]),
        "files array": (value[:files_at], value[files_at + 1 :]),
        "message_ids array": (delivered[:-2], delivered[-1:]),
    }


@pytest.mark.timeout(HANG_TIMEOUT_S)
@pytest.mark.parametrize("size", [2**60, 2**62, 2**63 - 1, -(2**60), -(2**63)])
@pytest.mark.parametrize("target", list(_huge_targets()))
def test_a_huge_declared_length_is_poison_and_allocates_nothing(target, size):
    prefix, suffix = _huge_targets()[target]
    value = prefix + zigzag(size) + suffix + b"\x00" * 64
    decoder = ChatEventDecoder()
    decoder.decode(ChatEventEncoder().encode(_events()[0]))  # warm
    tracemalloc.start()
    try:
        with pytest.raises(PoisonRecord) as caught:
            decoder.decode(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (type(caught.value), caught.value.code) in {
        (SchemaMismatch, "AVRO_DECODE"),
        (SchemaMismatch, "TRAILING_BYTES"),
    }
    assert peak < 256 * 1024, f"{peak} bytes traced for a {len(value)}-byte record"


def test_a_huge_declared_length_in_a_skipped_writer_field_allocates_nothing():
    writer = copy.deepcopy(READER_RAW)
    writer["fields"].append({"name": "blob", "type": "bytes", "default": ""})
    registry = FakeRegistry({9: writer})
    out = io.BytesIO()
    event = _events()[3]
    fastavro.schemaless_writer(out, parse_plain(writer), {**event_to_record(event), "blob": b""})
    body = out.getvalue()
    assert body.endswith(b"\x00")
    decoder = ChatEventDecoder(registry)
    for size in (2**60, 2**63 - 1, -(2**63)):
        value = b"\x00" + struct.pack(">I", 9) + body[:-1] + zigzag(size) + b"tail"
        tracemalloc.start()
        try:
            with contextlib.suppress(PoisonRecord):
                decoder.decode(value)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, (size, peak)


# -- whatever fastavro raises becomes SchemaMismatch ----------------------------------------------

UNEXPECTED = [
    MemoryError(),
    OverflowError("int too large"),
    RecursionError("maximum recursion depth"),
    ValueError("bad"),
    IndexError("list index out of range"),
    KeyError("payload"),
    TypeError("NoneType"),
    EOFError(),
    struct.error("unpack"),
    SystemError("cython"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    AssertionError(),
    ZeroDivisionError(),
    NotImplementedError(),
    AttributeError("x"),
    LookupError(),
    fastavro.read.SchemaResolutionError("mismatch"),
]


@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda e: type(e).__name__)
def test_any_exception_from_fastavro_becomes_schema_mismatch(monkeypatch, error):
    value = ChatEventEncoder().encode(_events()[1])

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(codec.fastavro, "schemaless_reader", explode)
    with pytest.raises(SchemaMismatch) as caught:
        ChatEventDecoder(fast=False).decode(value)
    assert caught.value.code == "AVRO_DECODE"
    assert caught.value.__cause__ is error
    assert type(error).__name__ in str(caught.value)


@pytest.mark.parametrize("error", UNEXPECTED[:8], ids=lambda e: type(e).__name__)
def test_any_exception_while_building_the_event_becomes_schema_mismatch(monkeypatch, error):
    value = ChatEventEncoder().encode(_events()[1])

    def explode(record: Any) -> Any:
        raise error

    monkeypatch.setattr(codec, "event_from_record", explode)
    with pytest.raises(SchemaMismatch) as caught:
        ChatEventDecoder(fast=False).decode(value)
    assert caught.value.code == "AVRO_DECODE"


@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda e: type(e).__name__)
def test_any_exception_from_the_generated_reader_becomes_schema_mismatch(monkeypatch, error):
    value = ChatEventEncoder().encode(_events()[1])

    def explode(buf: bytes, pos: int) -> Any:
        raise error

    monkeypatch.setattr(codec.get_bundle(), "fast_reader", explode)
    with pytest.raises(SchemaMismatch) as caught:
        ChatEventDecoder().decode(value)
    assert caught.value.code == "AVRO_DECODE"
    assert caught.value.__cause__ is error


def test_registry_unavailable_still_passes_through_the_fuzzed_decoder():
    class Flaky(FakeRegistry):
        def get_schema(self, schema_id: int) -> Any:
            raise RegistryUnavailable("down")

    value = b"\x00" + struct.pack(">I", 1) + ChatEventEncoder().encode(_events()[0])[10:]
    with pytest.raises(RegistryUnavailable):
        ChatEventDecoder(Flaky({})).decode(value)
