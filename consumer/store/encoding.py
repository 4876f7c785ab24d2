"""The changelog's encoding: how chats and the bodies of their waiting calls are written to
the compacted changelog topic, and read back. No other module knows these bytes.

Records, by key:

* `<chat key>` (UTF-8): the chat's state, a JSON object (`encode_chat`); where the chat
  lives on the portal is `"b": [session ID, CHAT_ID, Bitrix user id]` (absent in records
  written before it was kept, and until a send lands). Its waiting calls appear by
  reference only, `[offset, status, attempts, first failure, held since,
  redrives]`, so a change to a chat costs a small record whatever its backlog.
* `FE <writer>-<n>`: a block, the bodies of the calls one commit added to one partition,
  `[[chat, offset, body], ...]`; deleted (tombstone) once none of its calls waits. A body is
  `[event id, seq, kind, method, element, occurred at, origin, raw hex, raw key hex,
  headers]` (`encode_body`).
* `FD <writer>-<n>:<i>`: part `i` of a block too large for one record; the block's own
  record then holds `{"parts": n}` and comes after its parts.
* Read only (written by earlier versions): `FF <chat> FF <offset>`, one body per record;
  and whole calls inline in the chat's record.

The marks FD..FF never occur in UTF-8, so they never start a chat key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from consumer.core.ranges import RangeSet
from consumer.core.state import ChatState, PendingCall, PortalChat, user_from_list, user_to_list

_BODY_MARK = b"\xff"
_BLOCK_MARK = b"\xfe"
_PART_MARK = b"\xfd"

KeyKind = Literal["chat", "block", "part", "body"]


class MissingCallBody(ValueError):
    """A chat's record refers to a call whose body is not in the changelog."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"no body for the waiting call from offset {offset}")
        self.offset = offset


# -- keys ------------------------------------------------------------------------------------
def key_kind(key: bytes) -> KeyKind:
    """What a changelog key names."""
    mark = key[:1]
    if mark == _BLOCK_MARK:
        return "block"
    if mark == _PART_MARK:
        return "part"
    if mark == _BODY_MARK:
        return "body"
    return "chat"


def block_key(writer: str, number: int) -> bytes:
    """The key of block `number` written by `writer` (an id unique to one run of one
    process, so blocks never overwrite one another)."""
    return b"%b%b-%d" % (_BLOCK_MARK, writer.encode(), number)


def part_key(block: bytes, index: int) -> bytes:
    """The key of part `index` of the block keyed `block`."""
    return b"%b%b:%d" % (_PART_MARK, block[1:], index)


def block_of_part(key: bytes) -> bytes:
    """The block key a part key belongs to."""
    return _BLOCK_MARK + key[1:].rpartition(b":")[0]


def body_key(chat: str, offset: int) -> bytes:
    """The key of a body record of its own (as written before blocks)."""
    return b"%b%b%b%d" % (_BODY_MARK, chat.encode(), _BODY_MARK, offset)


def parse_body_key(key: bytes) -> tuple[str, int]:
    """`(chat, offset)` of a body key."""
    chat, _, offset = key[1:].rpartition(_BODY_MARK)
    return chat.decode(), int(offset)


# -- calls -----------------------------------------------------------------------------------
def encode_body(call: PendingCall) -> bytes:
    """The fixed part of a call (event id .. headers)."""
    return orjson.dumps(
        [
            call.event_id,
            call.seq,
            call.kind,
            call.method,
            call.element,
            call.occurred_at,
            list(call.origin),
            call.raw.hex(),
            call.raw_key.hex(),
            [[k, v.hex()] for k, v in call.headers],
        ]
    )


def _ref(call: PendingCall) -> orjson.Fragment:
    return orjson.Fragment(
        b"[%d,%d,%d,%d,%d,%d]"
        % (
            call.offset,
            call.status,
            call.attempts,
            call.first_failure_ms,
            call.held_since_ms,
            call.redrive_count,
        )
    )


def _call(fields: list[Any]) -> PendingCall:
    """A call from its body's fields followed by its reference's changing ones."""
    return PendingCall(
        fields[0],
        fields[1],
        fields[2],
        fields[3],
        fields[4],
        fields[5],
        (fields[6][0], fields[6][1], fields[6][2]),
        bytes.fromhex(fields[7]),
        bytes.fromhex(fields[8]),
        tuple((k, bytes.fromhex(v)) for k, v in fields[9]),
        *fields[10:15],
    )


def decode_body(body: bytes | list[Any]) -> list[Any]:
    """A body's fields (a body read from a block is already decoded)."""
    return orjson.loads(body) if isinstance(body, bytes) else body


# -- blocks ----------------------------------------------------------------------------------
def encode_block(items: list[tuple[str, int, bytes]]) -> bytes:
    """`[[chat, offset, body], ...]` from `(chat, offset, encoded body)`."""
    return orjson.dumps([[chat, offset, orjson.Fragment(body)] for chat, offset, body in items])


def decode_block(value: bytes) -> list[tuple[str, int, list[Any]]]:
    """`(chat, offset, body fields)` per call of a block."""
    return [(chat, offset, body) for chat, offset, body in orjson.loads(value)]


def split_block(key: bytes, value: bytes, limit: int) -> list[tuple[bytes, bytes]]:
    """The records that store block `key`: itself if it fits in `limit` bytes, else its
    parts and then a manifest under its own key."""
    if len(value) <= limit:
        return [(key, value)]
    parts = [value[start : start + limit] for start in range(0, len(value), limit)]
    records = [(part_key(key, index), part) for index, part in enumerate(parts)]
    records.append((key, orjson.dumps({"parts": len(parts)})))
    return records


def parts_of(value: bytes) -> int | None:
    """The number of parts a block's record announces; None for a block stored whole."""
    if value[:1] != b"{":
        return None
    return int(orjson.loads(value)["parts"])


# -- chats -----------------------------------------------------------------------------------
def encode_chat(state: ChatState) -> bytes:
    """The chat's own record (its waiting calls by reference)."""
    doc: dict[str, Any] = {"w": state.watermark, "a": state.last_activity_ms}
    if state.session:
        doc["s"] = 1
    if state.user is not None:  # the whole block, compact (`core.state.user_to_list`)
        doc["U"] = user_to_list(state.user)
    if state.portal is not None:  # [session ID, CHAT_ID, Bitrix user id]
        where = state.portal
        doc["b"] = [where.session_id, where.chat_id, where.user_id]
    if state.outbox:
        doc["o"] = [_ref(call) for call in state.outbox]
    if state.held_rename is not None:
        doc["h"] = _ref(state.held_rename)
    if state.deleted:
        doc["d"] = state.deleted
    if state.recent_ids:
        doc["r"] = state.recent_ids
    if state.last_offset >= 0:
        doc["l"] = state.last_offset
    if state.failed:
        doc["F"] = state.failed.ranges
    if state.gaps:
        doc["g"] = state.gaps.ranges
    if state.parked:
        doc["p"] = 1
    if state.last_rename_at:
        doc["n"] = state.last_rename_at
    return orjson.dumps(doc)


def chat_doc(value: bytes) -> dict[str, Any]:
    """A chat record's fields, for a look before decoding it whole."""
    doc: dict[str, Any] = orjson.loads(value)
    return doc


def is_idle_doc(doc: Mapping[str, Any]) -> bool:
    """Nothing waiting, held or parked (the same rule as `ChatState.is_idle`)."""
    return not doc.get("o") and "h" not in doc and not doc.get("p")


def decode_chat(
    doc: Mapping[str, Any], bodies: Mapping[int, bytes | list[Any]]
) -> tuple[ChatState, list[int]]:
    """The chat's state from its record's fields and its calls' bodies by offset; and the
    offsets of calls whose body is missing (those calls are left out)."""
    missing: list[int] = []

    def call(ref: list[Any]) -> PendingCall | None:
        if len(ref) > 6:  # written before bodies had records of their own
            return _call(ref)
        body = bodies.get(ref[0])
        if body is None:
            missing.append(ref[0])
            return None
        return _call([*decode_body(body), *ref[1:]])

    outbox = [c for c in (call(ref) for ref in doc.get("o", ())) if c is not None]
    held = call(doc["h"]) if "h" in doc else None
    failed = _ranges(doc["F"]) if doc.get("F") else None
    if failed is None and doc.get("f"):  # earlier versions: a list of sequences
        failed = _ranges([[seq, seq] for seq in doc["f"]])
    state = ChatState(
        watermark=doc.get("w", 0),
        session=bool(doc.get("s")),
        # `"u"`: records written when only the user id was kept.
        user=user_from_list(doc["U"]) if "U" in doc else {"id": doc["u"]} if "u" in doc else None,
        portal=_portal_chat(doc["b"]) if "b" in doc else None,
        outbox=outbox,
        held_rename=held,
        deleted=doc.get("d"),
        recent_ids=doc.get("r"),
        last_offset=doc.get("l", -1),
        failed=failed,
        gaps=_ranges(doc["g"]) if doc.get("g") else None,
        parked=bool(doc.get("p")),
        last_rename_at=doc.get("n", 0),
        last_activity_ms=doc.get("a", 0),
    )
    return state, missing


def _portal_chat(ids: list[int]) -> PortalChat:
    session_id, chat_id, user_id = [*ids, 0, 0, 0][:3]
    return PortalChat(int(session_id), int(chat_id), int(user_id))


def _ranges(pairs: list[list[int]]) -> RangeSet:
    ranges = RangeSet()
    for lo, hi in pairs:
        ranges.add(lo, hi)
    return ranges
