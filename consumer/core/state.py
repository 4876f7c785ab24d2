"""Per-chat state (event sourcing): the outbox of pending calls, watermark, session, dedup.

Pure data. An idle chat holds a handful of small fields, so memory stays bounded by active
chats (idle ones expire by TTL). How a state is written to the changelog topic is
`consumer.store`'s business alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumer.core.ranges import RangeSet

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

    @property
    def offset(self) -> int:
        """The source offset of the event: the call's id within its chat's partition."""
        return self.origin[2]


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
    # The source offset of the last event without a sequence admitted: after a restart the
    # partition is read again from its committed offset, and a record at or below this one
    # was already decided (however many event ids ago).
    last_offset: int = -1
    failed: RangeSet | None = None  # dead-lettered sequences a redrive may replay
    gaps: RangeSet | None = None  # sequences given up on (a late one is dead-lettered)
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
