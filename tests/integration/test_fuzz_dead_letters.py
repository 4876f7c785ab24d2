"""Fuzzed poison on the real broker: thousands of corrupt records mixed with valid events.

The engine must keep running, dead-letter every poison record as it arrived (same bytes,
same key, class `poison`, the code of how it was corrupted), apply every valid event once,
count the re-published ones as duplicates, and account for every record it consumed.
"""

from __future__ import annotations

import random
import struct
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.codec import ChatEventDecoder, ChatEventEncoder, SchemaRegistryClient
from consumer.core.events import ChatEvent, ExternalUser, MessageSent, chat_key
from consumer.core.mapping import SEND
from consumer.errors import PoisonRecord
from consumer.simulator import SimulatorConfig, SimulatorServer
from tests.avro_bytes import zigzag
from tests.integration.harness import (
    CONNECTOR,
    LINE,
    PORTAL,
    EngineThread,
    applied_call_list,
    make_settings,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka

SEED = 0xD1E
CHATS = 100
SENDS_PER_CHAT = 3
DUPLICATES = 100
POISON = 4_600  # with the valid events and their duplicates: 5,000 records


@pytest.fixture
def sim():
    with SimulatorServer(
        SimulatorConfig(preset_lines=[(CONNECTOR, LINE)], rate_limit_enabled=False)
    ) as server:
        server.start()
        yield server


@dataclass
class Planned:
    """One record to publish and what must become of it."""

    key: bytes | None
    value: bytes | None
    kind: str  # "valid", "duplicate" or the name of the mutation
    code: str | None = None  # the dead-letter code a poison record must carry
    partition: int = -1
    offset: int = -1


def _header_length(value: bytes) -> int:
    return 5 if value[0] == 0 else 10


# Each mutation: (rng, valid record) -> (value, the code it must give, or None if that
# depends on where the corruption landed; the local decoder then says which).
Mutation = Callable[[random.Random, bytes], tuple[bytes | None, str | None]]


def wrong_magic(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    first = rng.choice([b for b in range(256) if b not in (0x00, 0xC3)])
    return bytes([first]) + value[1:], "UNKNOWN_MAGIC"


def unknown_fingerprint(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return b"\xc3\x01" + rng.randbytes(8) + value[_header_length(value) :], "UNKNOWN_FINGERPRINT"


def unknown_schema_id(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    schema_id = rng.randrange(1_000_000, 2**32)  # the simulator's registry counts from 1
    body = value[_header_length(value) :]
    return b"\x00" + struct.pack(">I", schema_id) + body, "UNKNOWN_SCHEMA_ID"


def truncated_header(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return value[: rng.randint(1, 4) if value[0] == 0 else rng.randint(2, 9)], "TRUNCATED"


def truncated_body(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return value[: rng.randrange(_header_length(value), len(value))], "AVRO_DECODE"


def trailing_garbage(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return value + rng.randbytes(rng.randint(1, 32)), "TRAILING_BYTES"


def huge_length(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    header = _header_length(value)
    assert value[header] == 0x48  # the 36-character event id opens the datum
    size = rng.choice((2**60, 2**62, 2**63 - 1, -(2**60)))
    return value[:header] + zigzag(size) + value[header + 37 :], "AVRO_DECODE"


def empty(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return rng.choice((b"", None)), "EMPTY"


def bit_flips(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    data = bytearray(value)
    for _ in range(rng.choice((1, 2, 4))):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data), None


def random_body(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return value[: _header_length(value)] + rng.randbytes(rng.randint(0, 80)), None


def random_bytes(rng: random.Random, value: bytes) -> tuple[bytes | None, str | None]:
    return rng.randbytes(rng.randint(1, 120)), None


MUTATIONS: list[Mutation] = [
    wrong_magic, unknown_fingerprint, unknown_schema_id, truncated_header, truncated_body,
    trailing_garbage, huge_length, empty, bit_flips, bit_flips, random_body, random_bytes,
]  # fmt: skip


def _event(chat: str, seq: int) -> ChatEvent:
    return ChatEvent(
        event_id=str(uuid.uuid4()), portal=PORTAL, connector=CONNECTOR, line=LINE,
        chat_id=chat, occurred_at=1_764_000_000_000 + seq * 1000,
        payload=MessageSent(f"m{seq}", f"text {seq} of {chat}"), sequence=seq,
        user=ExternalUser(id=f"user-{chat}", name="Anna"),
    )  # fmt: skip


def _plan(
    rng: random.Random, encoders: list[ChatEventEncoder], oracle: ChatEventDecoder
) -> list[Planned]:
    """Valid sends per chat in order, poison everywhere in between, duplicates at the end."""
    chats = [f"fuzz-{i}" for i in range(CHATS)]
    valid: dict[str, list[Planned]] = {}
    for index, chat in enumerate(chats):
        key = chat_key(PORTAL, CONNECTOR, LINE, chat).encode()
        valid[chat] = [
            Planned(key, encoders[(index + seq) % 2].encode(_event(chat, seq)), "valid")
            for seq in range(1, SENDS_PER_CHAT + 1)
        ]
    samples = [p.value for queue in valid.values() for p in queue]
    poison: list[Planned] = []
    while len(poison) < POISON:
        mutate = rng.choice(MUTATIONS)
        value, by_construction = mutate(rng, rng.choice(samples))
        try:
            oracle.decode(value)
            continue  # the corruption landed somewhere harmless: not poison, try another
        except PoisonRecord as exc:
            code = exc.code
        assert by_construction in (None, code), (mutate.__name__, value)
        roll = rng.random()
        key = (
            chat_key(PORTAL, CONNECTOR, LINE, rng.choice(chats)).encode() if roll < 0.7
            else rng.randbytes(rng.randint(1, 16)) if roll < 0.9
            else None
        )  # fmt: skip
        poison.append(Planned(key, value, mutate.__name__, code))
    # Interleave: each chat's sends keep their order; poison lands anywhere among them.
    order = [chat for chat in chats for _ in range(SENDS_PER_CHAT)] + [None] * (POISON // 2)
    rng.shuffle(order)
    cursors = dict.fromkeys(chats, 0)
    stream: list[Planned] = []
    spare = iter(poison)
    for slot in order:
        if slot is None:
            stream.append(next(spare))
        else:
            stream.append(valid[slot][cursors[slot]])
            cursors[slot] += 1
    tail = list(spare)
    for original in rng.sample([p for queue in valid.values() for p in queue], DUPLICATES):
        tail.append(Planned(original.key, original.value, "duplicate"))
    rng.shuffle(tail)  # a duplicate always follows its original: the originals came first
    return stream + tail


def _publish(bootstrap: str, topic: str, plan: list[Planned]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                        "enable.idempotence": True})  # fmt: skip
    errors: list[str] = []

    def delivered(planned: Planned) -> Callable[..., None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
                return
            planned.partition, planned.offset = msg.partition(), msg.offset()

        return report

    for planned in plan:
        while True:
            try:
                producer.produce(
                    topic, key=planned.key, value=planned.value, on_delivery=delivered(planned)
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:5]


def test_fuzzed_poison_is_dead_lettered_as_it_came_and_valid_events_all_apply(
    kafka_bootstrap, topic_factory, unique, sim
):
    topic = topic_factory(2)
    settings = make_settings(kafka_bootstrap, topic, unique("g"), sim)
    rng = random.Random(SEED)
    with SchemaRegistryClient(sim.registry_url) as registry:
        encoders = [
            ChatEventEncoder("single-object"),
            ChatEventEncoder("confluent", registry, subject=f"{topic}-value"),
        ]
        plan = _plan(rng, encoders, ChatEventDecoder(registry))
    poison = [p for p in plan if p.code is not None]
    kinds = Counter(p.kind for p in plan)
    assert len(plan) == 5_000 and len(poison) == POISON
    assert kinds["valid"] == CHATS * SENDS_PER_CHAT and kinds["duplicate"] == DUPLICATES

    with EngineThread(settings) as running:
        _publish(kafka_bootstrap, topic, plan)

        def all_accounted() -> bool:
            assert running.thread.is_alive(), f"engine crashed: {running.error!r}"
            return running.outcomes_total() >= len(plan)

        wait_until(all_accounted, 90, f"{len(plan)} outcomes")
        outcomes = {
            name: running.outcome(name)
            for name in ("applied", "duplicate", "dead_lettered", "superseded", "moot", "skipped")
        }
        assert running.thread.is_alive()
    # stop() above raised if the engine thread died.

    assert outcomes == {
        "applied": CHATS * SENDS_PER_CHAT,
        "duplicate": DUPLICATES,
        "dead_lettered": POISON,
        "superseded": 0,
        "moot": 0,
        "skipped": 0,
    }
    assert outcomes["applied"] + outcomes["duplicate"] + outcomes["dead_lettered"] == len(plan)

    dead = read_all(kafka_bootstrap, settings.dlq_topic(topic), expect=len(poison), timeout=60)
    assert len(dead) == len(poison)
    by_origin = {(p.partition, p.offset): p for p in plan}
    seen: set[tuple[int, int]] = set()
    codes: Counter[tuple[str, str]] = Counter()
    for message in dead:
        headers = dict(message.headers())
        origin = (
            int(headers["__connect.errors.partition"]),
            int(headers["__connect.errors.offset"]),
        )
        assert origin not in seen, f"{origin} dead-lettered twice"
        seen.add(origin)
        planned = by_origin[origin]
        assert planned.code is not None, f"valid record {origin} ({planned.kind}) dead-lettered"
        assert headers["__connect.errors.topic"] == topic.encode()
        assert headers["imconnector.error.class"] == b"poison"
        assert headers["imconnector.error.code"] == planned.code.encode(), (
            planned.kind, planned.value)  # fmt: skip
        assert (message.value() or b"") == (planned.value or b""), planned.kind
        assert (message.key() or b"") == (planned.key or b"")
        assert message.partition() == origin[0]
        codes[(planned.kind, planned.code)] += 1
    assert seen == {(p.partition, p.offset) for p in poison}
    # the corruptions whose code is certain all carried it (asserted per record above)
    for kind, code in [
        ("wrong_magic", "UNKNOWN_MAGIC"), ("unknown_fingerprint", "UNKNOWN_FINGERPRINT"),
        ("unknown_schema_id", "UNKNOWN_SCHEMA_ID"), ("truncated_header", "TRUNCATED"),
        ("truncated_body", "AVRO_DECODE"), ("trailing_garbage", "TRAILING_BYTES"),
        ("huge_length", "AVRO_DECODE"), ("empty", "EMPTY"),
    ]:  # fmt: skip
        assert codes[(kind, code)] == kinds[kind] > 0, kind

    applied = applied_call_list(sim)
    for index in range(CHATS):
        chat = f"fuzz-{index}"
        assert applied[chat] == [
            (SEND, f"m{seq}:text {seq} of {chat}") for seq in range(1, SENDS_PER_CHAT + 1)
        ], chat
