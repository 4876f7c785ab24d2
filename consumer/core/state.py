"""Per-chat state (event sourcing): the outbox of pending calls, watermark, session, dedup.

Pure data. An idle chat holds a handful of small fields, so memory stays bounded by active
chats (idle ones expire by TTL). `PortalChat` is where the chat lives on the portal (session,
chat and customer ids its last successful send was answered with), what a send of unknown
outcome is looked up by. How a state is written to the changelog topic is
`consumer.store`'s business alone; the chat's `user` block goes there as the compact list
of `user_to_list` (the fixed field order of `USER_FIELDS`, so the block rebuilt is the one
sent before, key order included: the portal hashes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumer.core.ranges import RangeSet

# Call status in the outbox: QUEUED was never sent (safe to send after a crash);
# IN_FLIGHT was durably marked before its request left (unknown outcome after a crash).
QUEUED = 0
IN_FLIGHT = 1

# The `user` block's fields in the order they are sent; `picture` is kept as its URL.
USER_FIELDS = ("id", "name", "last_name", "email", "url", "gender", "phone", "picture")


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


@dataclass(frozen=True, slots=True)
class PortalChat:
    """Where a chat lives on the portal: the Open Lines session `ID` and `CHAT_ID` and the
    Bitrix user id (`user`) of the customer, as a successful send answered them; 0 where
    not known. A read-back of the chat's messages needs them (`consumer.bitrix.readback`)."""

    session_id: int = 0
    chat_id: int = 0
    user_id: int = 0

    def updated(self, result: dict[str, Any] | None) -> PortalChat:
        """This, with what a send's element result (`session_id`, `chat_id`, `user`) names;
        a result without a session (the portal answers none when the message went into a
        closed session) keeps the ids known before."""
        if not result:
            return self
        return PortalChat(
            portal_id(result.get("session_id")) or self.session_id,
            portal_id(result.get("chat_id")) or self.chat_id,
            portal_id(result.get("user")) or self.user_id,
        )


def portal_id(value: Any) -> int:
    """A portal's numeric id (answered as a string or a number); 0 for anything else."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return 0


@dataclass(slots=True)
class ChatState:
    """Everything the service remembers about one chat."""

    watermark: int = 0  # highest sequence decided (applied, skipped or dead-lettered)
    session: bool = False  # a send succeeded, so the chat has an Open Lines session
    user: dict[str, Any] | None = None  # the last whole `user` block (its id: USER_ID)
    portal: PortalChat | None = None  # where the chat lives on the portal, once a send landed
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


def user_to_list(user: dict[str, Any]) -> list[str | None]:
    """The `user` block as a list in `USER_FIELDS` order (trailing blanks dropped)."""
    values: list[str | None] = [
        user["picture"].get("url") if name == "picture" and user.get(name) else user.get(name)
        for name in USER_FIELDS
    ]
    while values and values[-1] is None:
        values.pop()
    return values


def user_from_list(values: list[str | None]) -> dict[str, Any]:
    """Inverse of `user_to_list`."""
    user: dict[str, Any] = {}
    for name, value in zip(USER_FIELDS, values, strict=False):
        if value is not None:
            user[name] = {"url": value} if name == "picture" else value
    return user
