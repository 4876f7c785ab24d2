"""Sends of unknown outcome, looked up on the portal before anything is sent again.

A send is in doubt when it was in flight at a crash (the send ledger restores it marked in
flight) or when its request left and the answer was a timeout, a reset, a 5xx or
unreadable (the dispatcher hands it back as `UNKNOWN_OUTCOME`). Its chat then waits here:
first a settle delay, so the portal has finished the request (Bitrix24 cuts one off after
60 s), then the reads its `consumer.bitrix.readback.Lookup` asks for, which queue like
any call (grouped per portal/connector/line, many chats' reads in one REST `batch`,
through the same slots, limits and OAuth), until the lookup gives its verdict; the chat's
flow (`consumer.engine.chats`) applies that. A send with nothing to look it up by waits
the settle delay too before its fallback is applied (`on_verdict`): a portal answering
every send with a 5xx is then tried at that pace, not in a tight loop.

While its chat waits here, the send stays the head of the chat's outbox, marked in flight,
and the chat's later calls wait behind it; other chats flow on.

Nothing here is written to Kafka: after a crash the send is still in flight in the
changelog, so its lookup simply starts again.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from consumer.bitrix.readback import Lookup, Read, Step, Verdict
from consumer.core.state import ChatState, PendingCall
from consumer.dispatch.batch import CallResult
from consumer.engine.partition import Partition
from consumer.settings import EngineSettings

ChatRef = tuple[tuple[str, int], str]  # (topic, partition), chat key
Failure = tuple[str | None, str | None, int | None]  # code, message, HTTP status
PROBE_KIND = "Reconcile"  # the `kind` of a read made for a send in doubt
# Lookups whose settle delay ends this close together start together, so that their reads
# share requests (a restore or a failed batch puts many chats in doubt within moments).
TOGETHER_S = 0.25


@dataclass(slots=True, eq=False)
class Reconciliation:
    """One chat's send in doubt and where its lookup stands."""

    part: Partition
    chat: str
    call: PendingCall  # the send: the head of the chat's outbox, marked in flight
    cause: str  # "restart" (in flight at a crash) or "answer" (its answer was lost)
    error: Failure | None  # what the send's last request was answered (cause "answer")
    lookup: Lookup
    due: float  # monotonic: the settle delay ends and the first read queues
    ready: Step | None = None  # the read waiting for a request, or the verdict already known
    probe: PendingCall | None = None  # the read in a request
    reads: int = field(default=0)


class Reconciler:
    """The chats whose send is in doubt, their timers and their reads."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settle_s = settings.reconcile_settle_s
        # Applies a verdict known without a read, once its settle delay ended (the chat's
        # flow sets it).
        self.on_verdict: Callable[[Reconciliation, Verdict], None] = lambda found, verdict: None
        self._chats: dict[ChatRef, Reconciliation] = {}
        self._probes: dict[int, Reconciliation] = {}  # id(read call) -> its chat's lookup
        self._settling: list[tuple[float, int, Reconciliation]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._chats)

    def holds(self, part: Partition, chat: str) -> bool:
        """The chat's send is being looked up: its calls wait."""
        found = self._chats.get((part.key, chat))
        return found is not None and found.part is part

    def start(
        self,
        part: Partition,
        chat: str,
        call: PendingCall,
        state: ChatState,
        cause: str,
        error: Failure | None = None,
    ) -> None:
        """Begin looking `call` (the chat's head send) up: the chat waits the settle
        delay, then its first read queues (or, with nothing to read, `on_verdict`)."""
        _, connector, line, chat_id = chat.split("|", 3)
        lookup = Lookup(call.element, state.portal, connector, int(line), chat_id)
        due = time.monotonic() + self.settle_s
        found = Reconciliation(part, chat, call, cause, error, lookup, due, ready=lookup.first())
        self._chats[(part.key, chat)] = found
        heapq.heappush(self._settling, (due, next(self._order), found))

    def release(self, now: float) -> list[tuple[Partition, str, str]]:
        """`(partition, chat, read method)` of the lookups whose settle delay ended: their
        first read is to be queued; a verdict known without a read is applied now."""
        out: list[tuple[Partition, str, str]] = []
        if not self._settling or self._settling[0][0] > now:
            return out
        while self._settling and self._settling[0][0] <= now + TOGETHER_S:
            _, _, found = heapq.heappop(self._settling)
            ref = (found.part.key, found.chat)
            if self._chats.get(ref) is not found:
                continue
            if isinstance(found.ready, Verdict):
                del self._chats[ref]
                self.on_verdict(found, found.ready)
            elif found.ready is not None:
                out.append((found.part, found.chat, found.ready.method))
        return out

    def take(self, part: Partition, chat: str, method: str) -> PendingCall | None:
        """The read call for a request of `method`, if the chat's lookup waits for one."""
        found = self._chats.get((part.key, chat))
        if found is None or found.part is not part:
            return None
        read = found.ready
        if not isinstance(read, Read) or read.method != method:
            return None
        call = found.call
        probe = PendingCall(
            call.event_id,
            call.seq,
            PROBE_KIND,
            method,
            dict(read.params),
            call.occurred_at,
            call.origin,
            headers=call.headers,
        )
        found.ready = None
        found.probe = probe
        found.reads += 1
        self._probes[id(probe)] = found
        return probe

    def put_back(self, probe: PendingCall) -> tuple[Partition, str] | None:
        """A read planned but never sent (its transaction was aborted): it waits again;
        returns where to queue it."""
        found = self._probes.pop(id(probe), None)
        if found is None or found.probe is not probe:
            return None
        found.probe = None
        found.ready = Read(probe.method, probe.element)
        found.reads -= 1
        return found.part, found.chat

    def owns(self, call: PendingCall) -> bool:
        """`call` is a read made here."""
        return id(call) in self._probes

    def answered(self, result: CallResult) -> tuple[Reconciliation, Step] | None:
        """A read's result, turned into the lookup's next step: another read (queued by the
        caller) or the verdict (the chat leaves the reconciler). None when the read is not
        (or no longer) one of ours."""
        found = self._probes.pop(id(result.call), None)
        if found is None or found.probe is not result.call:
            return None
        found.probe = None
        if result.cancelled:  # its partition was revoked: the next owner looks again
            return None
        if result.ok:
            step = found.lookup.answered(result.call.method, result.result)
        else:
            step = found.lookup.refused(result.code, result.error_class)
        if isinstance(step, Read):
            found.ready = step
        else:
            self._chats.pop((found.part.key, found.chat), None)
        return found, step

    def forget(self, parts: list[Partition]) -> None:
        """Drop the lookups of revoked partitions (their sends stay in flight in the
        changelog: the next owner looks them up)."""
        gone = {id(part) for part in parts}
        for ref, found in list(self._chats.items()):
            if id(found.part) in gone:
                del self._chats[ref]
        for key, found in list(self._probes.items()):
            if id(found.part) in gone:
                del self._probes[key]
        self._settling = [entry for entry in self._settling if id(entry[2].part) not in gone]
        heapq.heapify(self._settling)
