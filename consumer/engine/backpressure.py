"""Backpressure as decisions: which partitions to pause or resume, and which sequence gaps to
give up when the reorder buffers are full. Pure; the engine applies the answers.

* A partition pauses when its calls pile up (`max_buffered_events` split over the assigned
  partitions) or one of its chats has `max_buffered_per_chat` calls waiting; it resumes
  when both are down to half. Only calls waiting for a request (or in one) count: they
  drain whatever is read. Events held for a sequence gap and renames held for their
  chat's first send wait for records further on in the partition: pausing on them would
  wait forever.
* Events held in reorder buffers are bounded on their own: once `max_buffered_events` are
  held, the gaps open longest are given up until a quarter of the room is free (their late
  events are dead-lettered when they come, as after a gap timeout).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Load:
    """One partition's load: calls waiting for or in a request, whether a chat of it is
    crowded, whether it is paused for backpressure now, and whether it is being revoked."""

    calls: int
    crowded: bool
    paused: bool
    revoking: bool = False


def share(max_buffered_events: int, partitions: int) -> int:
    """The calls one partition may buffer before it pauses."""
    return max(10, max_buffered_events // max(1, partitions))


def pauses(loads: dict[K, Load], limit: int) -> tuple[list[K], list[K]]:
    """`(pause, resume)`: partitions whose backpressure pause starts or ends now."""
    pause: list[K] = []
    resume: list[K] = []
    for key, load in loads.items():
        if not load.paused and (load.calls >= limit or load.crowded):
            pause.append(key)
        elif load.paused and load.calls <= limit // 2 and not load.crowded and not load.revoking:
            resume.append(key)
    return pause, resume


def still_crowded(outbox: int, max_per_chat: int) -> bool:
    """A crowded chat stays so until its waiting calls are down to half the limit."""
    return outbox > max_per_chat // 2


def relief(held: int, limit: int) -> int:
    """How many held events must be let go now (0 below the limit): down to three
    quarters of it."""
    return 0 if held < limit else held - limit * 3 // 4


def oldest_first(lanes: Iterable[tuple[int, K]]) -> list[K]:
    """Lanes by the time their gap opened, oldest first (the ones to give up first)."""
    return [lane for _, lane in sorted(lanes, key=_opened)]


def _opened(entry: tuple[int, object]) -> int:
    return entry[0]
