"""Per-chat state (event sourcing): the outbox of pending calls, watermark, session, dedup.

Pure data plus a compact JSON codec for the changelog topic. An idle chat holds a handful
of small fields, so memory stays bounded by active chats (idle ones expire by TTL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# Call status in the outbox: QUEUED was never sent (safe to send after a crash);
# IN_FLIGHT was durably marked before its request left (unknown outcome after a crash).
QUEUED = 0
IN_FLIGHT = 1


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

    # The immutable head of `to_json` (event id .. headers) encoded once: a chat's state is
    # re-written to the changelog at every change while its calls wait, and re-encoding
    # each waiting call's record bytes every time was a tenth of the engine's CPU.
    _frozen: bytes | None = field(default=None, repr=False, compare=False)
    # The last whole encoding and the changing fields it was made from: a waiting call's
    # fields rarely change between writes, so most writes reuse it as it is.
    _encoded: orjson.Fragment | None = field(default=None, repr=False, compare=False)
    _encoded_for: tuple[int, int, int, int, int] | None = field(
        default=None, repr=False, compare=False
    )

    def to_json(self) -> orjson.Fragment:
        """Compact positional form for the changelog (a list; see `from_json`)."""
        changing = (
            self.status,
            self.attempts,
            self.first_failure_ms,
            self.held_since_ms,
            self.redrive_count,
        )
        if changing == self._encoded_for and self._encoded is not None:
            return self._encoded
        frozen = self._frozen
        if frozen is None:
            frozen = self._frozen = orjson.dumps(
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
            )[:-1]
        self._encoded = orjson.Fragment(b"%b,%d,%d,%d,%d,%d]" % (frozen, *changing))
        self._encoded_for = changing
        return self._encoded

    @classmethod
    def from_json(cls, data: list[Any]) -> PendingCall:
        """Inverse of `to_json`."""
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
    user_id: str | None = None  # last external user id seen (USER_ID for chat.name.set)
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

    def to_bytes(self) -> bytes:
        """Serialise for the changelog topic."""
        doc: dict[str, Any] = {"w": self.watermark, "a": self.last_activity_ms}
        if self.session:
            doc["s"] = 1
        if self.user_id is not None:
            doc["u"] = self.user_id
        if self.outbox:
            doc["o"] = [call.to_json() for call in self.outbox]
        if self.held_rename is not None:
            doc["h"] = self.held_rename.to_json()
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
    def from_bytes(cls, data: bytes) -> ChatState:
        """Inverse of `to_bytes`."""
        doc = orjson.loads(data)
        held = doc.get("h")
        return cls(
            watermark=doc.get("w", 0),
            session=bool(doc.get("s")),
            user_id=doc.get("u"),
            outbox=[PendingCall.from_json(c) for c in doc.get("o", ())],
            held_rename=None if held is None else PendingCall.from_json(held),
            deleted=doc.get("d"),
            recent_ids=doc.get("r"),
            failed=doc.get("f"),
            gaps=doc.get("g"),
            parked=bool(doc.get("p")),
            last_rename_at=doc.get("n", 0),
            last_activity_ms=doc.get("a", 0),
        )
