"""Request planning: which waiting head calls leave together, and when. Pure; the clock and
the dispatcher's state are arguments.

Head calls wait in one FIFO queue per portal/connector/line/method (`Group`). A queue
becomes a request when it holds a full batch; when its oldest call has waited `linger_s`
*and* a request slot of its portal is free (while every slot is busy a partial request
would only queue behind the others, so it keeps filling); or at once when its portal has
nothing in flight (an idle service adds no latency). Each portal has `slots` request slots;
a round plans up to twice that many requests per portal (one ledger commit covers them),
and the next round for a portal waits until its previous requests have all started. One
portal's slots are its own: a portal whose requests hang never holds another's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

Group = tuple[str, str, int, str]  # portal, connector, line, method
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """How requests are formed: calls per request, linger, request slots per portal."""

    batch_size: int = 50
    linger_s: float = 0.005
    slots: int = 8


class RequestPlanner(Generic[T]):
    """The waiting queues and the planning rule."""

    def __init__(self, limits: PlanLimits) -> None:
        self.limits = limits
        self._queues: dict[Group, deque[T]] = {}
        self._since: dict[Group, float] = {}  # when the oldest waiting entry was queued

    def enqueue(self, group: Group, item: T, now: float) -> None:
        """Queue `item` (a chat whose head call has `group`'s method) at the back."""
        waiting = self._queues.get(group)
        if waiting is None:
            waiting = self._queues[group] = deque()
        if not waiting:
            self._since[group] = now
        waiting.append(item)

    def waiting(self) -> int:
        """Entries queued in all groups."""
        return sum(len(q) for q in self._queues.values())

    def discard(self, keep: Callable[[T], bool]) -> None:
        """Drop the entries `keep` refuses (their partition was revoked)."""
        for group, waiting in self._queues.items():
            self._queues[group] = deque(item for item in waiting if keep(item))

    def plan(
        self,
        now: float,
        in_flight: Mapping[str, int],
        limit_of: Callable[[Group], int],
        take: Callable[[Group, T], bool],
        gated: Callable[[str], bool] = lambda portal: False,
    ) -> list[tuple[Group, list[T]]]:
        """The requests to make now, oldest queue first, as `(group, entries)`.

        `in_flight`: requests per portal submitted and not finished; `limit_of`: how many
        calls one request of the group may carry; `take(group, entry)`: False when the
        entry went stale (it is skipped); `gated`: the portal's limits already hold a
        request back (its calls pile up meanwhile, so the next request is a full one).
        """
        slots = self.limits.slots
        planned: dict[str, int] = {}
        out: list[tuple[Group, list[T]]] = []
        groups = sorted((g for g, q in self._queues.items() if q), key=self._since.__getitem__)
        for group in groups:
            portal = group[0]
            busy = in_flight.get(portal, 0) + planned.get(portal, 0)
            if in_flight.get(portal, 0) > slots or busy >= 2 * slots or gated(portal):
                continue
            waiting = self._queues[group]
            limit = max(1, limit_of(group))
            idle = in_flight.get(portal, 0) == 0
            while waiting and busy < 2 * slots:
                lingered = now - self._since[group] >= self.limits.linger_s
                if len(waiting) < limit and not (idle or (lingered and busy < slots)):
                    break  # let the batch fill up
                entries: list[T] = []
                while waiting and len(entries) < limit:
                    item = waiting.popleft()
                    if take(group, item):
                        entries.append(item)
                if entries:
                    out.append((group, entries))
                    busy += 1
                    planned[portal] = planned.get(portal, 0) + 1
            if waiting:
                self._since[group] = now
        return out
