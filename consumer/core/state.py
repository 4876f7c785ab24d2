"""Per-chat state (event sourcing): the outbox of pending calls, watermark, session, dedup.

Pure data plus a compact JSON codec for the changelog topic. An idle chat holds a handful
of small fields, so memory stays bounded by active chats (idle ones expire by TTL).

In the changelog a chat is one record under its key (`to_bytes`). The chat's record
refers to its waiting calls by source offset and carries only their changing fields, so a
change costs a small record, whatever the length of the outbox. A call's body (its
request element and the original record, `PendingCall.body`) is written once: the bodies
of the calls a commit adds to one partition share a block record (`block_key`,
`encode_block`), deleted (tombstone) when the last of its calls is done. Changelogs
written before blocks have one body record per call under `body_key(chat, offset)`;
they are still read.

The chat's `user` block (the whole profile it sends with every call) is kept in the chat's
record as a list in the fixed field order of `USER_FIELDS`, so the block it rebuilds is the
one sent before, key order included (the portal hashes it). Records written before kept
only the user id (`"u"`); they are still read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

# Call status in the outbox: QUEUED was never sent (safe to send after a crash);
# IN_FLIGHT was durably marked before its request left (unknown outcome after a crash).
QUEUED = 0
IN_FLIGHT = 1

# The `user` block's fields in the order they are sent; `picture` is kept as its URL.
USER_FIELDS = ("id", "name", "last_name", "email", "url", "gender", "phone", "picture")

_BODY_MARK = b"\xff"  # never occurs in UTF-8, so never in a chat's own key
_BLOCK_MARK = b"\xfe"  # never occurs in UTF-8 either, and never starts a body key


def body_key(chat: str, offset: int) -> bytes:
    """The changelog key of the body of `chat`'s call from source offset `offset`."""
    return b"%b%b%b%d" % (_BODY_MARK, chat.encode(), _BODY_MARK, offset)


def parse_body_key(key: bytes) -> tuple[str, int] | None:
    """`(chat, offset)` of a body key; None for a chat's own key."""
    if not key.startswith(_BODY_MARK):
        return None
    chat, _, offset = key[1:].rpartition(_BODY_MARK)
    return chat.decode(), int(offset)


def block_key(writer: str, number: int) -> bytes:
    """The changelog key of block `number` of call bodies written by `writer` (an id
    unique to one run of one process, so blocks never overwrite one another)."""
    return b"%b%b-%d" % (_BLOCK_MARK, writer.encode(), number)


def is_block_key(key: bytes) -> bool:
    """True for the key of a block of call bodies."""
    return key.startswith(_BLOCK_MARK)


def encode_block(items: list[tuple[str, PendingCall]]) -> bytes:
    """`[[chat, offset, body], ...]`: the bodies of calls of several chats."""
    return orjson.dumps([[chat, call.offset, orjson.Fragment(call.body())] for chat, call in items])


def decode_block(value: bytes) -> list[tuple[str, int, list[Any]]]:
    """Inverse of `encode_block`: `(chat, offset, decoded body)` per call."""
    return [(chat, offset, body) for chat, offset, body in orjson.loads(value)]


class MissingCallBody(ValueError):
    """A chat's changelog record refers to a call whose body record is not there."""


@dataclass(slots=True)
class PendingCall:
    """One Bitrix24 call an event asked for, kept until its outcome is final."""

    event_id: str
    seq: int | None
    kind: str
    method: str
    element: dict[str, Any]
    occurred_at: int
    origin: tuple[str, int, int]  # source topic, partition, offset (for dead-letter headers)
    raw: bytes = b""  # the original record value, re-emitted verbatim if dead-lettered
    raw_key: bytes = b""
    headers: tuple[tuple[str, bytes], ...] = ()  # original record headers
    status: int = QUEUED
    attempts: int = 0
    first_failure_ms: int = 0
    held_since_ms: int = 0
    redrive_count: int = 0
    # Display fields of the user block cleaned to what the portal accepts; not persisted
    # (counted once, by whoever first handles the call).
    cleaned: tuple[str, ...] = ()

    @property
    def offset(self) -> int:
        """The source offset of the event: the call's id within its chat's partition."""
        return self.origin[2]

    def body(self) -> bytes:
        """The fixed part (event id .. headers) as the value of its `body_key` record."""
        return orjson.dumps(
            [
                self.event_id,
                self.seq,
                self.kind,
                self.method,
                self.element,
                self.occurred_at,
                list(self.origin),
                self.raw.hex(),
                self.raw_key.hex(),
                [[k, v.hex()] for k, v in self.headers],
            ]
        )

    def ref(self) -> orjson.Fragment:
        """`[offset, status, attempts, first failure, held since, redrives]` for the chat's
        record."""
        return orjson.Fragment(
            b"[%d,%d,%d,%d,%d,%d]"
            % (
                self.origin[2],
                self.status,
                self.attempts,
                self.first_failure_ms,
                self.held_since_ms,
                self.redrive_count,
            )
        )

    @classmethod
    def from_parts(cls, body: bytes, ref: list[int]) -> PendingCall:
        """Inverse of `body` + `ref`."""
        return cls.from_json([*orjson.loads(body), *ref[1:]])

    @classmethod
    def from_json(cls, data: list[Any]) -> PendingCall:
        """A call from its fields in order; also reads changelogs written before bodies
        had records of their own (the whole call inline in its chat's record)."""
        return cls(
            data[0],
            data[1],
            data[2],
            data[3],
            data[4],
            data[5],
            (data[6][0], data[6][1], data[6][2]),
            bytes.fromhex(data[7]),
            bytes.fromhex(data[8]),
            tuple((k, bytes.fromhex(v)) for k, v in data[9]),
            data[10],
            data[11],
            data[12],
            data[13],
            data[14],
        )


@dataclass(slots=True)
class ChatState:
    """Everything the service remembers about one chat."""

    watermark: int = 0  # highest sequence decided (applied, skipped or dead-lettered)
    session: bool = False  # a send succeeded, so the chat has an Open Lines session
    user: dict[str, Any] | None = None  # the last whole `user` block (its id: USER_ID)
    outbox: list[PendingCall] = field(default_factory=list)
    held_rename: PendingCall | None = None  # waits for the first successful send
    deleted: list[str] | None = None  # recently deleted external message ids
    recent_ids: list[str] | None = None  # event ids seen, for events without a sequence
    failed: list[int] | None = None  # dead-lettered sequences a redrive may replay
    gaps: list[list[int]] | None = None  # [first, last] sequence ranges given up on
    parked: bool = False  # retries exhausted: later events are dead-lettered in order
    last_rename_at: int = 0
    last_activity_ms: int = 0

    def is_idle(self) -> bool:
        """True when nothing is pending: the state may expire after the TTL."""
        return not self.outbox and self.held_rename is None and not self.parked

    def calls(self) -> list[PendingCall]:
        """Every waiting call: the outbox, then the held rename."""
        if self.held_rename is None:
            return self.outbox
        return [*self.outbox, self.held_rename]

    def bodies(self) -> dict[int, bytes]:
        """Offset -> body of every waiting call (the records `to_bytes` refers to)."""
        return {call.offset: call.body() for call in self.calls()}

    def to_bytes(self) -> bytes:
        """Serialise for the changelog topic (waiting calls by reference, see the module)."""
        doc: dict[str, Any] = {"w": self.watermark, "a": self.last_activity_ms}
        if self.session:
            doc["s"] = 1
        if self.user is not None:
            doc["U"] = _user_to_list(self.user)
        if self.outbox:
            doc["o"] = [call.ref() for call in self.outbox]
        if self.held_rename is not None:
            doc["h"] = self.held_rename.ref()
        if self.deleted:
            doc["d"] = self.deleted
        if self.recent_ids:
            doc["r"] = self.recent_ids
        if self.failed:
            doc["f"] = self.failed
        if self.gaps:
            doc["g"] = self.gaps
        if self.parked:
            doc["p"] = 1
        if self.last_rename_at:
            doc["n"] = self.last_rename_at
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(
        cls, data: bytes, bodies: Mapping[int, bytes | list[Any]] | None = None
    ) -> ChatState:
        """Inverse of `to_bytes`; `bodies` are the chat's call bodies by offset (a body
        record's bytes, or a body already decoded from a block)."""
        doc = orjson.loads(data)
        held = doc.get("h")
        found = bodies or {}
        return cls(
            watermark=doc.get("w", 0),
            session=bool(doc.get("s")),
            user=_user_from_doc(doc),
            outbox=[_call(entry, found) for entry in doc.get("o", ())],
            held_rename=None if held is None else _call(held, found),
            deleted=doc.get("d"),
            recent_ids=doc.get("r"),
            failed=doc.get("f"),
            gaps=doc.get("g"),
            parked=bool(doc.get("p")),
            last_rename_at=doc.get("n", 0),
            last_activity_ms=doc.get("a", 0),
        )


def _call(entry: list[Any], bodies: Mapping[int, bytes | list[Any]]) -> PendingCall:
    if len(entry) > 6:  # written before bodies had records of their own
        return PendingCall.from_json(entry)
    body = bodies.get(entry[0])
    if body is None:
        raise MissingCallBody(f"no body record for the waiting call from offset {entry[0]}")
    if isinstance(body, bytes):
        return PendingCall.from_parts(body, entry)
    return PendingCall.from_json([*body, *entry[1:]])


def _user_to_list(user: dict[str, Any]) -> list[str | None]:
    values: list[str | None] = [
        user["picture"].get("url") if name == "picture" and user.get(name) else user.get(name)
        for name in USER_FIELDS
    ]
    while values and values[-1] is None:
        values.pop()
    return values


def _user_from_doc(doc: dict[str, Any]) -> dict[str, Any] | None:
    values = doc.get("U")
    if values is None:
        legacy = doc.get("u")  # written when only the user id was kept
        return None if legacy is None else {"id": legacy}
    user: dict[str, Any] = {}
    for name, value in zip(USER_FIELDS, values, strict=False):
        if value is not None:
            user[name] = {"url": value} if name == "picture" else value
    return user
