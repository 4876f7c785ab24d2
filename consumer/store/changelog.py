"""One partition's chat states and the changelog records that keep them (`consumer.store.
encoding` has the bytes).

`PartitionStore` holds the chats of one source partition: decoded while they are in use, and
kept as their changelog record (`Dormant`, a few hundred bytes) once idle for a minute. It
restores itself from the changelog (`load`, then `finish_load`), and turns the chats changed
since the last commit into the records of the next one (`changes`): each changed chat's
record, the bodies of its new calls in shared blocks (split in parts when one record cannot
hold them), and tombstones for the bodies and blocks nothing refers to any more.

A block's calls all finished: the block is deleted. A block down to a quarter of its calls
for `REHOME_AFTER_S`: its waiting calls are written into a new block and the old one goes,
so a few calls waiting out one portal's outage do not keep every body they shared a commit
with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from consumer.core.state import ChatState
from consumer.store.encoding import (
    block_key,
    block_of_part,
    body_key,
    chat_doc,
    decode_block,
    decode_chat,
    encode_block,
    encode_body,
    encode_chat,
    is_idle_doc,
    key_kind,
    parse_body_key,
    part_key,
    parts_of,
    split_block,
)

BLOCK_BYTES = 256 * 1024  # a block is closed once its bodies reach this size
REHOME_AFTER_S = 60.0
# A chat idle this long is kept as its record until its next event. Not at once: most
# chats of a busy line get their next event within seconds.
COMPACT_AFTER_MS = 60_000

Record = tuple[bytes, bytes | None]


@dataclass(slots=True)
class Dormant:
    """An idle chat kept as its changelog record (nothing waiting, held or parked)."""

    record: bytes
    active_ms: int


@dataclass(slots=True)
class Block:
    """A block of call bodies: its calls still waiting, how many it was written with, when
    (monotonic), and how many part records store it (0: one record)."""

    live: int
    size: int
    born: float
    parts: int = 0


@dataclass(slots=True)
class Restored:
    """What a restore found: chats with waiting calls (decoded), and calls whose body was
    missing, by chat and source offset (they are dead-lettered)."""

    waiting: list[str] = field(default_factory=list)
    missing: list[tuple[str, int]] = field(default_factory=list)
    records: int = 0


class PartitionStore:
    """The chats of one source partition and their changelog bookkeeping."""

    def __init__(self, writer: str, record_limit: int = 1_000_000) -> None:
        self.chats: dict[str, ChatState | Dormant] = {}
        self.dirty: set[str] = set()
        self._writer = writer  # names this run's blocks (unique per process run)
        self._record_limit = record_limit
        self._blocks_made = 0
        # Bodies written per chat (by source offset), the block holding each (none: a body
        # record of its own), the live blocks, blocks to write again, keys to delete.
        self._stored: dict[str, set[int]] = {}
        self._block_of: dict[tuple[str, int], bytes] = {}
        self._blocks: dict[bytes, Block] = {}
        self._sparse: set[bytes] = set()
        self._orphans: set[bytes] = set()
        # Restore only: chat records, bodies and block parts read so far.
        self._records: dict[str, bytes] = {}
        self._bodies: dict[str, dict[int, bytes | list[Any]]] = {}
        self._parts: dict[bytes, dict[int, bytes]] = {}
        self._seen_blocks: dict[bytes, list[tuple[str, int]]] = {}
        self._loaded = 0

    # -- chats ------------------------------------------------------------------------------
    def get(self, chat: str) -> ChatState:
        """The chat's state (a fresh one for a chat never seen), decoded if dormant."""
        value = self.chats.get(chat)
        if isinstance(value, ChatState):
            return value
        if value is None:
            fresh = ChatState()
            self.chats[chat] = fresh
            return fresh
        state, _ = decode_chat(chat_doc(value.record), {})
        self.chats[chat] = state
        return state

    def peek(self, chat: str) -> ChatState | None:
        """The chat's state if it is decoded (no decoding, no new chat)."""
        value = self.chats.get(chat)
        return value if isinstance(value, ChatState) else None

    def __len__(self) -> int:
        return len(self.chats)

    def sweep(
        self, now_ms: int, ttl_ms: int, busy: Callable[[str], bool], idle_ms: int = COMPACT_AFTER_MS
    ) -> int:
        """Expire chats idle past `ttl_ms` (tombstones keep the changelog small); keep those
        idle for `idle_ms` as their records. `busy` chats (a call in flight, events held for
        a gap) are left alone. Returns how many were made dormant."""
        compacted = 0
        for chat, value in list(self.chats.items()):
            if busy(chat):
                continue
            if isinstance(value, Dormant):
                active = value.active_ms
            elif value.is_idle():
                active = value.last_activity_ms
            else:
                continue
            if now_ms - active > ttl_ms:
                del self.chats[chat]
                self.dirty.add(chat)
            elif isinstance(value, ChatState) and now_ms - active > idle_ms:
                if value.recent_ids:
                    continue  # chats deduplicated by event id stay decoded
                self.chats[chat] = Dormant(encode_chat(value), active)
                compacted += 1
        return compacted

    # -- restore ----------------------------------------------------------------------------
    def load(self, key: bytes, value: bytes | None) -> None:
        """One changelog record, in partition order."""
        self._loaded += 1
        kind = key_kind(key)
        if kind == "chat":
            # Idle chats (nearly all of them) are kept as their records at once, so the work
            # is spread over the restore's slices rather than piled up at its end.
            chat = key.decode()
            self._records.pop(chat, None)
            self.chats.pop(chat, None)
            if value is not None:
                doc = chat_doc(value)
                if is_idle_doc(doc):
                    self.chats[chat] = Dormant(value, int(doc.get("a", 0)))
                else:
                    self._records[chat] = value
        elif kind == "block":
            self._load_block(key, value)
        elif kind == "part":
            block = block_of_part(key)
            index = int(key.rpartition(b":")[2])
            if value is None:
                self._parts.get(block, {}).pop(index, None)
            else:
                self._parts.setdefault(block, {})[index] = value
        else:  # a body record of its own (written before blocks)
            chat, offset = parse_body_key(key)
            if value is None:
                if (chat, offset) not in self._block_of:  # not re-homed to a block
                    self._bodies.get(chat, {}).pop(offset, None)
            else:
                self._bodies.setdefault(chat, {})[offset] = value

    def _load_block(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            for chat, offset in self._seen_blocks.pop(key, ()):
                if self._block_of.get((chat, offset)) == key:  # not re-homed to a later one
                    del self._block_of[(chat, offset)]
                    self._bodies.get(chat, {}).pop(offset, None)
            self._parts.pop(key, None)
            return
        parts = parts_of(value)
        if parts is not None:
            found = self._parts.get(key, {})
            if len(found) != parts:
                return  # parts lost (cannot happen in one transaction): its calls are missing
            value = b"".join(found[index] for index in range(parts))
        items = decode_block(value)
        self._seen_blocks[key] = [(chat, offset) for chat, offset, _ in items]
        for chat, offset, body in items:
            self._bodies.setdefault(chat, {})[offset] = body
            self._block_of[(chat, offset)] = key

    def finish_load(self) -> Restored:
        """Decode the chats with waiting calls, keep the others as their records, and note
        for deletion every body and block no chat refers to."""
        out = Restored(records=self._loaded)
        for chat, record in self._records.items():
            bodies = self._bodies.pop(chat, {})
            state, missing = decode_chat(chat_doc(record), bodies)
            self.chats[chat] = state
            referred = {call.offset for call in state.calls()}
            if referred:
                self._stored[chat] = referred
            if missing:
                self.dirty.add(chat)  # its record must drop the missing calls
                out.missing.extend((chat, offset) for offset in missing)
            if state.outbox or state.held_rename is not None:
                out.waiting.append(chat)
            for offset in bodies.keys() - referred:
                self._unreferenced(chat, offset)
        for owner, left in self._bodies.items():  # idle or no chat: finished calls
            for offset in left:
                self._unreferenced(owner, offset)
        restored_at = time.monotonic()
        for key, items in self._seen_blocks.items():
            self._blocks[key] = Block(0, len(items), restored_at, len(self._parts.get(key, ())))
        for key in self._block_of.values():
            self._blocks[key].live += 1
        for key in [key for key, block in self._blocks.items() if not block.live]:
            self._drop_block(key)
        for block, parts in self._parts.items():  # parts of a block never completed
            if block not in self._blocks:
                self._orphans.update(part_key(block, index) for index in parts)
        self._records.clear()
        self._bodies.clear()
        self._parts.clear()
        self._seen_blocks.clear()
        return out

    def _unreferenced(self, chat: str, offset: int) -> None:
        """A restored body no chat refers to: its own record goes; its block's place is
        given up (the block goes once none of its calls is live)."""
        if self._block_of.pop((chat, offset), None) is None:
            self._orphans.add(body_key(chat, offset))

    # -- commit -----------------------------------------------------------------------------
    @property
    def has_changes(self) -> bool:
        """Whether the next commit has records for this partition."""
        return bool(self.dirty or self._orphans or self._sparse)

    def changes(self) -> tuple[list[Record], list[str]]:
        """The records of the chats changed since the last call (and of the bodies and
        blocks that came or went with them), and which chats they carry."""
        if self._sparse:
            self._rehome()
        records: list[Record] = []
        fresh: list[tuple[str, int, bytes]] = []
        chats = list(self.dirty)
        for chat in chats:
            value = self.chats.get(chat)
            if value is None:  # expired: a tombstone
                self._write_bodies(chat, [], fresh, records)
                records.append((chat.encode(), None))
            elif isinstance(value, Dormant):
                records.append((chat.encode(), value.record))
            else:
                calls = value.calls()
                self._write_bodies(chat, [(call.offset, call) for call in calls], fresh, records)
                records.append((chat.encode(), encode_chat(value)))
        self.dirty.clear()
        blocks = self._write_blocks(fresh)
        orphans = [(key, None) for key in self._orphans]
        self._orphans.clear()
        # Blocks first (a chat's record refers to them), deletions last.
        return blocks + records + orphans, chats

    def rewrite(self, chats: Iterable[str]) -> None:
        """The transaction that carried these chats' records was aborted: write them again,
        with all their waiting calls' bodies (those it carried never landed)."""
        ignored: list[Record] = []
        for chat in chats:
            self.dirty.add(chat)
            for offset in self._stored.pop(chat, set()):
                self._release(chat, offset, ignored)
        self._orphans.update(key for key, _ in ignored)

    def _write_bodies(
        self,
        chat: str,
        calls: list[tuple[int, Any]],
        fresh: list[tuple[str, int, bytes]],
        records: list[Record],
    ) -> None:
        """Queue the bodies of the chat's new calls for this commit's blocks; let go of the
        bodies of its finished ones."""
        written = self._stored.get(chat, set())
        now = {offset for offset, _ in calls}
        for offset, call in calls:
            if offset not in written:
                fresh.append((chat, offset, encode_body(call)))
        for offset in written - now:
            self._release(chat, offset, records)
        if now:
            self._stored[chat] = now
        else:
            self._stored.pop(chat, None)

    def _write_blocks(self, fresh: list[tuple[str, int, bytes]]) -> list[Record]:
        """The new bodies in as few blocks as fit `BLOCK_BYTES` (a bigger body gets a block
        of its own, split in parts if one record cannot hold it)."""
        records: list[Record] = []
        start = 0
        while start < len(fresh):
            end, size = start, 0
            while end < len(fresh) and (end == start or size + len(fresh[end][2]) <= BLOCK_BYTES):
                size += len(fresh[end][2])
                end += 1
            items = fresh[start:end]
            key = block_key(self._writer, self._blocks_made)
            self._blocks_made += 1
            stored = split_block(key, encode_block(items), self._record_limit)
            records.extend(stored)
            for chat, offset, _ in items:
                self._block_of[(chat, offset)] = key
            self._blocks[key] = Block(len(items), len(items), time.monotonic(), len(stored) - 1)
            start = end
        return records

    def _release(self, chat: str, offset: int, records: list[Record]) -> None:
        """A call's body is no longer needed: delete its record, or its block once the block
        holds no live call."""
        key = self._block_of.pop((chat, offset), None)
        if key is None:
            records.append((body_key(chat, offset), None))  # a body record of its own
            return
        block = self._blocks.get(key)
        if block is not None and block.live > 1:
            block.live -= 1
            if 4 * block.live <= block.size and time.monotonic() - block.born >= REHOME_AFTER_S:
                self._sparse.add(key)
            return
        self._sparse.discard(key)
        records.extend((k, None) for k in self._block_keys(key))
        self._blocks.pop(key, None)

    def _block_keys(self, key: bytes) -> list[bytes]:
        """The keys that store block `key`: its parts, then itself."""
        block = self._blocks.get(key)
        parts = block.parts if block is not None else 0
        return [*(part_key(key, index) for index in range(parts)), key]

    def _drop_block(self, key: bytes) -> None:
        self._orphans.update(self._block_keys(key))
        self._blocks.pop(key, None)

    def _rehome(self) -> None:
        """Sparse blocks: their live calls' bodies go into this commit's blocks, and the old
        blocks are deleted in the same transaction."""
        for (chat, offset), key in list(self._block_of.items()):
            if key in self._sparse:
                del self._block_of[(chat, offset)]
                self._stored.get(chat, set()).discard(offset)
                self.dirty.add(chat)
        for key in self._sparse:
            self._drop_block(key)
        self._sparse.clear()
