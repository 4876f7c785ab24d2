"""The engine's side of the requests: which chats wait for one, which are in one, and the
batches the planner forms from them (`consumer.engine.planner` decides when).

A chat waits in at most one queue, with its head call; it is *busy* while that call is in a
request. Marking a call in flight happens here, in the same step that puts it in a batch;
the batch leaves once the transaction carrying the mark is committed. A chat whose send is
in doubt waits in the `Reconciler` instead: its reads queue here like calls (a group of
their own per portal/connector/line), and its later calls wait until the lookup is done.
"""

from __future__ import annotations

import time

from consumer.bitrix.readback import READ_METHODS
from consumer.core.mapping import BATCHABLE, RENAME
from consumer.core.state import IN_FLIGHT, QUEUED, ChatState, PendingCall
from consumer.dispatch.batch import Batch, DispatchPort
from consumer.dispatch.dispatcher import BATCH_LIMIT
from consumer.engine.partition import Partition
from consumer.engine.planner import Group, PlanLimits, RequestPlanner
from consumer.engine.reconciler import Reconciler
from consumer.settings import EngineSettings


class Requests:
    """Queues of chats waiting for a request, and the batches made of them."""

    def __init__(
        self,
        settings: EngineSettings,
        dispatcher: DispatchPort,
        owns: dict[tuple[str, int], Partition],
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._owns = owns  # the engine's assigned partitions (a stale entry is skipped)
        self.planner: RequestPlanner[tuple[Partition, str]] = RequestPlanner(
            PlanLimits(
                settings.batch_size, settings.linger_ms / 1000, settings.max_in_flight_requests
            )
        )
        self.reconciler = Reconciler(settings)

    def make_ready(self, part: Partition, chat: str, state: ChatState) -> None:
        """Queue the chat's head call for the next request of its method, once."""
        if (
            state.outbox
            and chat not in part.busy
            and chat not in part.ready
            and not self.reconciler.holds(part, chat)
        ):
            part.ready.add(chat)
            self._enqueue(part, chat, state.outbox[0].method)

    def enqueue_read(self, part: Partition, chat: str, method: str) -> None:
        """Queue the chat's next read (its send is being looked up)."""
        self._enqueue(part, chat, method)

    def _enqueue(self, part: Partition, chat: str, method: str) -> None:
        portal, connector, line, _ = chat.split("|", 3)
        self.planner.enqueue((portal, connector, int(line), method), (part, chat), time.monotonic())

    def plan(self) -> list[Batch]:
        """The requests to make now, their calls marked in flight (and the reads of sends in
        doubt whose settle delay ended)."""
        dispatcher = self._dispatcher
        now = time.monotonic()
        for part, chat, method in self.reconciler.release(now):
            self._enqueue(part, chat, method)
        taken: dict[tuple[int, str, str], PendingCall] = {}

        def take(group: Group, entry: tuple[Partition, str]) -> bool:
            part, chat = entry
            call = self._take(part, chat, group[3])
            if call is not None:
                taken[(id(part), chat, group[3])] = call
            return call is not None

        planned = self.planner.plan(
            now,
            dispatcher.in_flight_by_portal(),
            self._limit_of,
            take,
            gated=lambda portal: not dispatcher.portal_has_capacity(portal),
        )
        batches = []
        for (portal, connector, line, method), entries in planned:
            batch = Batch(portal, connector, line, method, [])
            for part, chat in entries:
                batch.calls.append((chat, taken[(id(part), chat, method)]))
                batch.routes.append((part.topic, part.partition, part.epoch))
            batches.append(batch)
        return batches

    def _limit_of(self, group: Group) -> int:
        """Calls one request of `group` may carry."""
        portal, _, _, method = group
        if method in READ_METHODS:  # sub-calls of one REST `batch`
            return BATCH_LIMIT
        if method in BATCHABLE:
            return self._settings.batch_size
        if method == RENAME:
            return min(self._settings.batch_size, self._dispatcher.rename_batch_limit(portal))
        return 1

    def _take(self, part: Partition, chat: str, method: str) -> PendingCall | None:
        """Mark a queued chat's head call in flight for a request of `method`, unless the
        entry went stale (revoked, nothing waiting, busy, or another method by now)."""
        if part.revoking or self._owns.get(part.key) is not part:
            return None
        if method in READ_METHODS:
            return self.reconciler.take(part, chat, method)
        state = part.store.peek(chat)
        if state is None or not state.outbox or chat in part.busy:
            part.ready.discard(chat)
            return None
        head = state.outbox[0]
        if head.method != method:  # the head changed (e.g. a superseded rename)
            self._enqueue(part, chat, head.method)
            return None
        part.ready.discard(chat)
        head.status = IN_FLIGHT
        head.attempts += 1
        part.busy.add(chat)
        part.store.dirty.add(chat)
        return head

    def unplan(self, batches: list[Batch]) -> None:
        """Put planned calls back in their queues (their transaction was aborted)."""
        for batch in batches:
            for (chat, call), (topic, partition, epoch) in zip(
                batch.calls, batch.routes, strict=True
            ):
                part = self._owns.get((topic, partition))
                if part is None or part.epoch != epoch:
                    continue
                if batch.method in READ_METHODS:
                    waiting = self.reconciler.put_back(call)
                    if waiting is not None:
                        self._enqueue(*waiting, batch.method)
                else:
                    self.requeue(part, chat, call)

    def requeue(self, part: Partition, chat: str, call: PendingCall) -> None:
        """A call marked in flight never left: queued again."""
        call.status = QUEUED
        call.attempts -= 1
        part.busy.discard(chat)
        part.store.dirty.add(chat)
        self.make_ready(part, chat, part.store.get(chat))

    def forget(self, parts: list[Partition]) -> None:
        """Drop the queue entries of revoked partitions."""
        revoked = {id(part) for part in parts}
        self.planner.discard(lambda entry: id(entry[0]) not in revoked)
        self.reconciler.forget(parts)
