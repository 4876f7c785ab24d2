"""Everything that changes a chat's state in the engine: a decoded event through admission
(`consumer.core.ordering`) into the fold (`consumer.core.fold`), a request's result, time
passing (gap timeouts, held renames) and a restore. Each change is written into the next
transaction (the chat is marked dirty), its outcomes are emitted, and the chat's head call
is queued for a request.

A send of unknown outcome (in flight at a restore, or handed back by the dispatcher as
`UNKNOWN_OUTCOME`) is looked up on the portal first (`consumer.engine.reconciler`); the
verdict is recorded beside the event's outcome (`reconciled_present`,
`reconciled_resent`, or `ambiguous_resent` when the lookup could not tell and the send is
resent under `unknown_outcome_policy`) and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from consumer.bitrix.readback import Read, Verdict
from consumer.core.events import ChatEvent
from consumer.core.fold import (
    FoldConfig,
    Outcome,
    new_call,
    on_event,
    on_failure,
    on_late,
    on_lookup,
    on_restore,
    on_success,
    on_tick,
)
from consumer.core.mapping import SEND
from consumer.core.ordering import Lane, Offer, admit, classify
from consumer.core.state import IN_FLIGHT, ChatState, PendingCall
from consumer.dispatch.batch import CallResult
from consumer.dispatch.dispatcher import UNKNOWN_OUTCOME
from consumer.engine.outputs import Outputs
from consumer.engine.partition import Held, Partition, event_of, offset_of
from consumer.engine.reconciler import Failure, Reconciliation
from consumer.engine.requests import Requests
from consumer.kafka.records import REDRIVE_HEADER
from consumer.observability.metrics import Metrics
from consumer.settings import EngineSettings, RetrySettings

logger = logging.getLogger(__name__)

# How often a send in doubt may go out when `reconcile_max_sends` is unset (`Settings`
# fills it in from `retry.max_attempts`; an `EngineSettings` on its own has this default).
DEFAULT_MAX_SENDS: int = RetrySettings.model_fields["max_attempts"].default


def pending_of(state: ChatState) -> int:
    """Calls the chat holds: its outbox and a held rename."""
    return len(state.outbox) + (state.held_rename is not None)


class ChatFlow:
    """Applies events, results and time to the chats of the engine's partitions."""

    def __init__(
        self,
        settings: EngineSettings,
        metrics: Metrics,
        outputs: Outputs,
        requests: Requests,
        now_ms: Callable[[], int],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._outputs = outputs
        self._requests = requests
        self._reconciler = requests.reconciler
        self._reconciler.on_verdict = self._verdict_without_reads
        self._now_ms = now_ms
        self.fold_config = FoldConfig(
            rename_wait_timeout_ms=int(settings.rename_wait_timeout_s * 1000),
            send_status_reading=settings.send_status_reading,
        )

    # -- events ----------------------------------------------------------------------------
    def admit(self, part: Partition, event: ChatEvent, held: Held) -> None:
        """A decoded, valid event: new, a duplicate, early (held for a gap) or late."""
        chat = event.key
        state = part.store.get(chat)
        lane = part.lanes.get(chat)
        dedup = self._settings.dedup_window
        if lane is None:
            # Nothing held for this chat: the next event in order, a redrive or a duplicate
            # needs no lane (the common case, so no per-event buffer objects).
            admission = classify(state, event, held.offset)
            if admission == "duplicate":
                self._skip(part, chat, held, "duplicate")
                return
            if admission in ("new", "redrive"):
                admit(state, event, admission, dedup, held.offset)
                part.store.dirty.add(chat)
                self._apply(part, chat, state, held)
                return
            lane = Lane(self._settings.reorder_buffer_per_chat, dedup, event_of, offset_of)
        offer = lane.offer(state, held, self._now_ms())
        self._offered(part, chat, state, lane, offer, "chat_buffer_full")

    def _offered(
        self,
        part: Partition,
        chat: str,
        state: ChatState,
        lane: Lane[Held],
        offer: Offer[Held],
        reason: str,
    ) -> None:
        """Apply what offering an event (or giving up a gap) did to a chat's lane; a gap
        given up is logged and counted with `reason`."""
        for item in offer.released:
            part.held_offsets.discard(item.offset)
        for item in offer.held:
            part.held_offsets.add(item.offset)
        if len(lane):
            part.lanes[chat] = lane
        else:
            part.lanes.pop(chat, None)
        for first, last in offer.gaps:
            logger.warning(
                "sequence gap %d..%d given up on (%s)",
                first,
                last,
                reason,
                extra={"chat": chat, "topic": part.topic, "partition": part.partition},
            )
            self._metrics.sequence_gaps.labels(reason=reason).inc()
            gap = PendingCall("", None, "gap", "", {}, 0, ("", -1, -1))
            self._outputs.skipped(chat, gap, "gap", missing=f"{first}..{last}")
        if offer.gaps or offer.ready:
            part.store.dirty.add(chat)
        for item, admission in offer.ready:
            if admission == "duplicate":
                self._skip(part, chat, item, "duplicate")
            elif admission == "late":
                call = self._call_for(part, state, item)
                self._changed(part, chat, state, pending_of(state), on_late(state, call))
            else:
                self._apply(part, chat, state, item)

    def _call_for(self, part: Partition, state: ChatState, held: Held) -> PendingCall:
        origin = (part.topic, part.partition, held.offset)
        return new_call(held.event, state, origin, held.raw, held.raw_key, held.headers)

    def _apply(self, part: Partition, chat: str, state: ChatState, held: Held) -> None:
        before = pending_of(state)
        call = self._call_for(part, state, held)
        if held.redrive:
            call.redrive_count = _redrive_count(held.headers)
        outcomes = on_event(
            state, held.event, call, self._now_ms(), self.fold_config, redrive=held.redrive
        )
        self._changed(part, chat, state, before, outcomes)

    def _skip(self, part: Partition, chat: str, held: Held, outcome: str) -> None:
        event = held.event
        origin = (part.topic, part.partition, held.offset)
        call = PendingCall(event.event_id, event.sequence, event.kind, "", {}, 0, origin)
        self._outputs.skipped(chat, call, outcome)

    def _changed(
        self, part: Partition, chat: str, state: ChatState, before: int, outcomes: list[Outcome]
    ) -> None:
        for outcome in outcomes:
            self._outputs.emit(chat, outcome)
        part.pending += pending_of(state) - before
        if len(state.outbox) >= self._settings.max_buffered_per_chat:
            part.crowded.add(chat)
        part.store.dirty.add(chat)
        if state.held_rename is not None:
            part.held_renames.add(chat)
        else:
            part.held_renames.discard(chat)
        self._requests.make_ready(part, chat, state)

    # -- results ---------------------------------------------------------------------------
    def result(self, part: Partition, result: CallResult) -> None:
        """The final result of a chat's head call (or of a read looking one up)."""
        chat = result.chat_key
        call = result.call
        if self._reconciler.owns(call):
            self._read(part, result)
            return
        state = part.store.get(chat)
        if not state.outbox or state.outbox[0] is not call:
            part.busy.discard(chat)
            self._requests.make_ready(part, chat, state)
            return
        if result.cancelled:  # never sent (its partition was being revoked)
            self._requests.requeue(part, chat, call)
            return
        part.busy.discard(chat)
        before = pending_of(state)
        now_ms = self._now_ms()
        call.attempts = max(call.attempts, result.attempts)
        if result.error_class == UNKNOWN_OUTCOME:  # the send may have taken effect
            failure = (result.code, result.message, result.http_status)
            self._look_up(part, chat, state, call, "answer", failure)
            return
        if result.ambiguous:  # resent after a timeout/reset: the portal may hold two
            self._outputs.skipped(chat, call, "ambiguous_resent", code="AMBIGUOUS_RETRY")
        if result.ok:
            outcomes = on_success(state, call, result.result, now_ms)
        else:
            call.first_failure_ms = call.first_failure_ms or now_ms
            outcomes = on_failure(
                state,
                call,
                result.error_class or "permanent",
                result.code or "UNKNOWN",
                result.message or "",
                now_ms,
                result.http_status,
            )
            if result.error_class == "exhausted":
                self._metrics.parked_chats.inc()
        self._changed(part, chat, state, before, outcomes)

    # -- sends in doubt --------------------------------------------------------------------
    def _look_up(
        self,
        part: Partition,
        chat: str,
        state: ChatState,
        call: PendingCall,
        cause: str,
        error: Failure | None = None,
    ) -> None:
        """The head send's outcome is unknown: look it up on the portal before anything is
        sent again (its chat waits; with nothing to look it up by, the fallback decides
        after the same settle delay)."""
        if self._settings.reconcile_sends:
            self._reconciler.start(part, chat, call, state, cause, error)
        else:
            self._decide(part, chat, call, Verdict("fallback", "disabled"), cause, error)

    def _verdict_without_reads(self, found: Reconciliation, verdict: Verdict) -> None:
        """A send with nothing to look it up by, once its settle delay ended."""
        self._decide(found.part, found.chat, found.call, verdict, found.cause, found.error)

    def _read(self, part: Partition, result: CallResult) -> None:
        """A read looking a send up came back: the next read, or the verdict."""
        answered = self._reconciler.answered(result)
        if answered is None:
            return
        found, step = answered
        if isinstance(step, Read):
            self._requests.enqueue_read(part, found.chat, step.method)
        else:
            self._decide(part, found.chat, found.call, step, found.cause, found.error)

    def _decide(
        self,
        part: Partition,
        chat: str,
        call: PendingCall,
        verdict: Verdict,
        cause: str,
        error: Failure | None = None,
    ) -> None:
        """Apply a lookup's verdict to the chat; record and count it. A send that went out
        `reconcile_max_sends` times without a known outcome is not sent again: it is
        dead-lettered as exhausted and its chat parks."""
        state = part.store.get(chat)
        if not state.outbox or state.outbox[0] is not call:  # the chat moved on meanwhile
            self._requests.make_ready(part, chat, state)
            return
        before = pending_of(state)
        now_ms = self._now_ms()
        policy = self._settings.unknown_outcome_policy
        where = _where(verdict)
        count = self._metrics.reconciliations.labels
        if verdict.outcome == "fallback":
            self._metrics.reconcile_fallbacks.labels(reason=verdict.reason).inc()
            logger.warning(
                "a send of unknown outcome could not be looked up on the portal (%s): "
                "unknown_outcome_policy %s decides",
                verdict.reason,
                policy,
                extra={"chat": chat, "topic": part.topic, "partition": part.partition},
            )
        resend = verdict.outcome == "missing" or (
            verdict.outcome == "fallback" and policy == "resend"
        )
        limit = self._settings.reconcile_max_sends or DEFAULT_MAX_SENDS
        if resend and call.attempts >= limit:
            count(result="exhausted").inc()
            code, message, status = error or (None, None, None)
            call.first_failure_ms = call.first_failure_ms or now_ms
            outcomes = on_failure(
                state,
                call,
                "exhausted",
                code or "UNKNOWN_OUTCOME",
                f"sent {call.attempts} times, the outcome unknown each time "
                f"({verdict.outcome}{': ' + verdict.reason if verdict.reason else ''}); "
                f"last answer: {message or 'none'}",
                now_ms,
                status,
            )
            self._metrics.parked_chats.inc()
            self._changed(part, chat, state, before, outcomes)
            return
        if verdict.outcome == "present":
            count(result="present").inc()
            self._outputs.skipped(
                chat, call, "reconciled_present", code="FOUND_ON_PORTAL", cause=cause, result=where
            )
        elif verdict.outcome == "missing":
            count(result="resent").inc()
            self._outputs.skipped(
                chat, call, "reconciled_resent", code="MISSING_ON_PORTAL", cause=cause, result=where
            )
        else:
            count(result="fallback").inc()
            if policy == "resend":
                self._outputs.skipped(
                    chat,
                    call,
                    "ambiguous_resent",
                    code="UNKNOWN_OUTCOME",
                    reason=verdict.reason,
                    cause=cause,
                )
        outcomes = on_lookup(state, call, verdict.outcome, where, policy, verdict.reason, now_ms)
        self._changed(part, chat, state, before, outcomes)

    # -- time ------------------------------------------------------------------------------
    def tick(self, part: Partition, now_ms: int) -> None:
        """Gaps open past the gap timeout (once the partition was read to its end) are
        given up; renames held past their timeout are dead-lettered."""
        gap_ms = int(self._settings.gap_timeout_s * 1000)
        for chat, lane in list(part.lanes.items()):
            state = part.store.get(chat)
            offer = lane.expire(state, now_ms, gap_ms, part.caught_up_ms)
            if offer.gaps:
                self._offered(part, chat, state, lane, offer, "timeout")
        for chat in list(part.held_renames):
            state = part.store.get(chat)
            before = pending_of(state)
            outcomes = on_tick(state, now_ms, self.fold_config)
            if outcomes:
                self._changed(part, chat, state, before, outcomes)

    def give_up_gap(self, part: Partition, chat: str) -> int:
        """Give up the chat's oldest gap now (the reorder buffers are full); returns how
        many held events that released."""
        lane = part.lanes.get(chat)
        if lane is None:
            return 0
        before = len(part.held_offsets)
        state = part.store.get(chat)
        now_ms = self._now_ms()
        self._offered(
            part, chat, state, lane, lane.expire(state, now_ms, 0, now_ms), "buffers_full"
        )
        return before - len(part.held_offsets)

    # -- restore ---------------------------------------------------------------------------
    def restored(self, part: Partition, waiting: list[str], policy: str) -> None:
        """Chats restored with waiting calls: an in-flight send is looked up on the portal
        (`reconcile_sends`), any other in-flight call follows `policy`; then the head calls
        queue for requests."""
        for chat in waiting:
            state = part.store.get(chat)
            head = state.outbox[0] if state.outbox else None
            if (
                head is not None
                and head.status == IN_FLIGHT
                and head.method == SEND
                and self._settings.reconcile_sends
            ):
                self._metrics.ambiguous_sends.labels(policy="reconcile").inc()
                part.pending += pending_of(state)
                if state.held_rename is not None:
                    part.held_renames.add(chat)
                self._look_up(part, chat, state, head, "restart")
                continue
            outcomes = on_restore(state, policy)
            for outcome in outcomes:
                self._outputs.emit(chat, outcome)
            if outcomes:
                part.store.dirty.add(chat)
            part.pending += pending_of(state)
            if state.held_rename is not None:
                part.held_renames.add(chat)
            self._requests.make_ready(part, chat, state)


def _where(verdict: Verdict) -> dict[str, Any] | None:
    """Where the chat lives as the lookup saw it, in the shape of a send's result."""
    where = verdict.where
    if where is None:
        return None
    return {"session_id": where.session_id, "chat_id": where.chat_id, "user": where.user_id}


def _redrive_count(headers: tuple[tuple[str, bytes], ...]) -> int:
    for key, value in headers:
        if key == REDRIVE_HEADER:
            try:
                return int(value)
            except ValueError:
                return 1
    return 0
