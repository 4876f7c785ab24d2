"""Per-chat admission: deduplication and the bounded reorder buffer. Pure, time is an argument.

With `sequence`: `seq <= watermark` is a duplicate unless it is a dead-lettered sequence
being redriven (or one the chat gave up waiting for: late); `seq == watermark + 1` goes on;
a later one waits in the reorder buffer until the gap fills or the gap timeout passes.
Without `sequence`: partition order; a record at or below the chat's last admitted source
offset is a re-read (after a restart, from the committed offset), and other copies are
recognised by `event_id` over the chat's last `dedup_window` ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from consumer.core.events import ChatEvent
from consumer.core.ranges import RangeSet
from consumer.core.state import ChatState

Admission = Literal["new", "redrive", "duplicate", "early", "late"]
T = TypeVar("T")


def classify(state: ChatState, event: ChatEvent, offset: int = -1) -> Admission:
    """Decide whether `event` (read at source `offset`) is new, a redrive of a dead letter,
    a duplicate, late or early."""
    seq = event.sequence
    if seq is None:
        if 0 <= offset <= state.last_offset:
            return "duplicate"  # read again after a restart: decided before
        if state.recent_ids and event.event_id in state.recent_ids:
            return "duplicate"
        return "new"
    if seq <= state.watermark:
        if state.failed and seq in state.failed:
            return "redrive"
        if state.gaps and seq in state.gaps:
            return "late"  # it arrived after the lane gave up waiting for it
        return "duplicate"
    if seq == state.watermark + 1:
        return "new"
    return "early"


def admit(
    state: ChatState, event: ChatEvent, admission: Admission, dedup_window: int, offset: int = -1
) -> None:
    """Record that `event` (read at source `offset`) was admitted: advance the watermark, or
    remember its id and offset."""
    seq = event.sequence
    if seq is None:
        recent = state.recent_ids or []
        recent.append(event.event_id)
        if len(recent) > dedup_window:
            del recent[: len(recent) - dedup_window]
        state.recent_ids = recent
        state.last_offset = max(state.last_offset, offset)
    elif admission == "redrive":
        assert state.failed is not None
        state.failed.discard(seq)
        if not state.failed:
            state.failed = None
    else:
        state.watermark = seq


def forget_event_id(state: ChatState, event_id: str) -> None:
    """A dead-lettered event without a sequence may come back by redrive: forget its id."""
    if state.recent_ids and event_id in state.recent_ids:
        state.recent_ids.remove(event_id)


class ReorderBuffer(Generic[T]):
    """Events of one chat that arrived ahead of a sequence gap, by sequence."""

    __slots__ = ("capacity", "held", "since_ms")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: dict[int, T] = {}
        self.since_ms = 0  # when the current gap was first seen

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, seq: int, item: T, now_ms: int) -> bool:
        """Keep `item`; False if the buffer is full (the caller then gives up on the gap)."""
        if seq in self.held:
            return True  # a duplicate of a held event: keep the first
        if len(self.held) >= self.capacity:
            return False
        if not self.held:
            self.since_ms = now_ms
        self.held[seq] = item
        return True

    def pop_next(self, watermark: int, now_ms: int) -> T | None:
        """The held event that continues `watermark`, if any; a gap behind it starts anew."""
        item = self.held.pop(watermark + 1, None)
        if item is not None and self.held:
            self.since_ms = now_ms
        return item

    def lowest(self) -> int | None:
        """The lowest held sequence (where the lane resumes after giving up on a gap)."""
        return min(self.held) if self.held else None

    def gap_expired(self, now_ms: int, timeout_ms: int) -> bool:
        """True when a gap has been open for `timeout_ms`."""
        return bool(self.held) and now_ms - self.since_ms >= timeout_ms

    def drop_through(self, watermark: int) -> list[T]:
        """Remove and return held events at or below `watermark` (duplicates by now)."""
        stale = [seq for seq in self.held if seq <= watermark]
        return [self.held.pop(seq) for seq in sorted(stale)]


class Offer(Generic[T]):
    """What offering one event (or letting time pass) did to a chat's lane."""

    __slots__ = ("gaps", "held", "ready", "released")

    def __init__(self) -> None:
        self.ready: list[tuple[T, Admission]] = []  # apply in this order
        self.held: list[T] = []  # newly waiting for a gap
        self.released: list[T] = []  # waited, now in `ready`
        self.gaps: list[tuple[int, int]] = []  # missing ranges given up on


class Lane(Generic[T]):
    """One chat's admission: dedup, reorder buffer and gap handling around its `ChatState`.

    `ready` items are already admitted (watermark advanced); the caller folds them in order.
    Duplicates come back in `ready` with admission "duplicate" so they can be counted.
    """

    def __init__(
        self,
        capacity: int,
        dedup_window: int,
        event_of: Callable[[T], ChatEvent],
        offset_of: Callable[[T], int] | None = None,
    ) -> None:
        self.buffer: ReorderBuffer[T] = ReorderBuffer(capacity)
        self._dedup_window = dedup_window
        self._event_of = event_of
        self._offset_of = offset_of

    def offer(self, state: ChatState, item: T, now_ms: int) -> Offer[T]:
        """Admit, hold or reject `item`; release what it unblocks."""
        out: Offer[T] = Offer()
        self._offer(state, item, now_ms, out)
        return out

    def _offer(self, state: ChatState, item: T, now_ms: int, out: Offer[T]) -> None:
        event = self._event_of(item)
        offset = self._offset_of(item) if self._offset_of is not None else -1
        admission = classify(state, event, offset)
        if admission in ("duplicate", "late"):
            out.ready.append((item, admission))
            return
        if admission == "early":
            assert event.sequence is not None
            if event.sequence in self.buffer.held:
                out.ready.append((item, "duplicate"))
                return
            if self.buffer.hold(event.sequence, item, now_ms):
                out.held.append(item)
                return
            self._give_up_gap(state, now_ms, out)  # full: move on from the lowest held
            self._offer(state, item, now_ms, out)
            return
        admit(state, event, admission, self._dedup_window, offset)
        out.ready.append((item, admission))
        self._release(state, now_ms, out)

    def _release(self, state: ChatState, now_ms: int, out: Offer[T]) -> None:
        for stale in self.buffer.drop_through(state.watermark):
            out.released.append(stale)
            out.ready.append((stale, "duplicate"))
        while True:
            nxt = self.buffer.pop_next(state.watermark, now_ms)
            if nxt is None:
                return
            out.released.append(nxt)
            admit(state, self._event_of(nxt), "new", self._dedup_window)
            out.ready.append((nxt, "new"))

    def _give_up_gap(self, state: ChatState, now_ms: int, out: Offer[T]) -> None:
        lowest = self.buffer.lowest()
        assert lowest is not None
        out.gaps.append((state.watermark + 1, lowest - 1))
        if state.gaps is None:
            state.gaps = RangeSet()
        state.gaps.add(state.watermark + 1, lowest - 1)
        state.watermark = lowest - 1
        self._release(state, now_ms, out)

    def expire(self, state: ChatState, now_ms: int, timeout_ms: int, caught_up_ms: int) -> Offer[T]:
        """Give up on a gap open longer than `timeout_ms` — but only once the partition was
        read to its end after the gap opened (`caught_up_ms`): while a backlog is still
        unread, the missing event may be in it."""
        out: Offer[T] = Offer()
        if self.buffer.gap_expired(now_ms, timeout_ms) and caught_up_ms >= self.buffer.since_ms:
            self._give_up_gap(state, now_ms, out)
        return out

    def __len__(self) -> int:
        return len(self.buffer)
