"""The event-sourced core: fold events and call results into `ChatState`, deciding calls.

No I/O and no clock of its own (time is an argument): every rule about *what* Bitrix24
should see lives here and is unit- and property-tested. The only side effect is on the
`ChatState` passed in, which the caller owns.

Rules:
* a rename waits for the chat's first successful send (held in state), then goes out;
  held longer than the rename timeout it is dead-lettered (class `causal_wait`);
* a newer rename supersedes an older one still held for the session;
* an edit or delete of a message already deleted is moot;
* an edit with neither text nor files is dead-lettered (`EMPTY_UPDATE`): the portal refuses
  such an update element (`connectors/base.php::processingInputNewAndUpdateMessage`), and an
  update changes the text only, so there is nothing to send;
* every call of a chat carries the last whole `user` block the chat was given
  (`consumer.core.mapping.chat_user_block`), so an event without `user` never blanks the
  customer's profile on the portal;
* when a call exhausts its retries the chat is parked: its later events are dead-lettered
  in order (class `parked`) until a redrive replays the chat;
* a send whose outcome is unknown is looked up on the portal (`on_lookup`): found, it took
  effect; missing, it is sent again; when the lookup cannot tell, the unknown outcome
  policy decides (resend, or dead-letter for a human).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.core.events import ChatEvent, MessageDeleted, MessageEdited
from consumer.core.frozen import frozen
from consumer.core.mapping import (
    DELETE,
    RENAME,
    SEND,
    UPDATE,
    chat_user_block,
    element_with_user,
)
from consumer.core.ordering import forget_event_id
from consumer.core.ranges import RangeSet
from consumer.core.state import IN_FLIGHT, QUEUED, ChatState, PendingCall, PortalChat

_DELETED_MEMORY = 32
_USER_METHODS = frozenset({SEND, UPDATE, DELETE})  # their element carries the user block


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """The knobs the fold needs."""

    rename_wait_timeout_ms: int = 3_600_000
    send_status_reading: bool = False


@frozen
class Outcome:
    """The final fate of one event: what the outcomes topic records and metrics count.

    `outcome` is one of applied, duplicate, superseded, moot, skipped, dead_lettered,
    ambiguous_resent.
    """

    call: PendingCall
    outcome: str
    error_class: str | None = None
    code: str | None = None
    message: str | None = None
    http_status: int | None = None
    result: dict[str, Any] | None = None


def new_call(
    event: ChatEvent,
    state: ChatState,
    origin: tuple[str, int, int],
    raw: bytes = b"",
    raw_key: bytes = b"",
    headers: tuple[tuple[str, bytes], ...] = (),
) -> PendingCall:
    """The outbox entry for `event` (method and request element from `consumer.core.mapping`);
    `PendingCall.cleaned` names the display fields cleaned in its user block."""
    user, cleaned = chat_user_block(event, state.user)
    method, element = element_with_user(event, user)
    call = PendingCall(
        event.event_id,
        event.sequence,
        event.kind,
        method,
        element,
        event.occurred_at,
        origin,
        raw,
        raw_key,
        headers,
    )
    call.cleaned = cleaned
    return call


def _remember_user(state: ChatState, event: ChatEvent, call: PendingCall) -> None:
    """The chat's user block becomes the one `event` brought (the call already built it)."""
    if event.user is None:
        return
    if call.method in _USER_METHODS:
        state.user = call.element["user"]
    else:
        state.user = chat_user_block(event, state.user)[0]


def _is_empty_update(payload: MessageEdited) -> bool:
    # Text "0" is text: only a missing or empty one counts (the portal's `Library::isEmpty`).
    return not payload.text and not payload.files


def _remember_failed(state: ChatState, call: PendingCall) -> None:
    if call.seq is None:
        forget_event_id(state, call.event_id)
        return
    if state.failed is None:
        state.failed = RangeSet()
    state.failed.add(call.seq)


def _dead(
    state: ChatState,
    call: PendingCall,
    error_class: str,
    code: str,
    message: str,
    http_status: int | None = None,
) -> Outcome:
    _remember_failed(state, call)
    return Outcome(call, "dead_lettered", error_class, code, message, http_status)


def on_event(
    state: ChatState,
    event: ChatEvent,
    call: PendingCall,
    now_ms: int,
    config: FoldConfig,
    *,
    redrive: bool = False,
) -> list[Outcome]:
    """Fold an admitted (new, in-order) event; returns the outcomes decided right away."""
    state.last_activity_ms = now_ms
    _remember_user(state, event, call)
    if state.parked:
        if not redrive:
            return [
                _dead(
                    state,
                    call,
                    "parked",
                    "CHAT_PARKED",
                    "an earlier event of this chat exhausted its retries; "
                    "redrive the chat's dead letters in order",
                )
            ]
        state.parked = False
    payload = event.payload
    if event.kind == "ReadConfirmed" and not config.send_status_reading:
        return [Outcome(call, "skipped", code="READING_DISABLED")]
    if isinstance(payload, MessageEdited | MessageDeleted):
        if state.deleted and payload.message_id in state.deleted:
            return [Outcome(call, "moot", code="MESSAGE_DELETED")]
        if isinstance(payload, MessageEdited) and _is_empty_update(payload):
            return [
                _dead(
                    state,
                    call,
                    "permanent",
                    "EMPTY_UPDATE",
                    "the edit has neither text nor files: Bitrix24 refuses such an "
                    "imconnector.update.messages element, so it was not sent",
                )
            ]
        if isinstance(payload, MessageDeleted):
            deleted = state.deleted or []
            deleted.append(payload.message_id)
            state.deleted = deleted[-_DELETED_MEMORY:]
    if call.method == RENAME:
        return _on_rename(state, event, call, now_ms)
    state.outbox.append(call)
    return []


def _on_rename(state: ChatState, event: ChatEvent, call: PendingCall, now_ms: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    if event.sequence is None and event.occurred_at < state.last_rename_at:
        # Without sequences, event time orders renames: a late older one changes nothing.
        return [Outcome(call, "superseded", code="NEWER_RENAME_SEEN")]
    state.last_rename_at = max(state.last_rename_at, event.occurred_at)
    # Only a *held* rename is superseded: which queued calls exist depends on timing, and
    # the calls a chat's events produce must not.
    if state.held_rename is not None:
        outcomes.append(Outcome(state.held_rename, "superseded", code="NEWER_RENAME"))
        state.held_rename = None
    if state.session or any(c.method == SEND for c in state.outbox):
        state.outbox.append(call)
    else:
        call.held_since_ms = now_ms
        state.held_rename = call
    return outcomes


def on_success(
    state: ChatState, call: PendingCall, result: dict[str, Any] | None, now_ms: int
) -> list[Outcome]:
    """The head call succeeded: record it, open the session, remember where the chat lives
    on the portal (a send's result), release a held rename."""
    _pop_head(state, call)
    state.last_activity_ms = now_ms
    if call.method == SEND:
        state.session = True
        where = (state.portal or PortalChat()).updated(result)
        if where != PortalChat():
            state.portal = where
        if state.held_rename is not None:
            held = state.held_rename
            state.held_rename = None
            held.held_since_ms = 0
            state.outbox.append(held)
    return [Outcome(call, "applied", result=result)]


def on_failure(
    state: ChatState,
    call: PendingCall,
    error_class: str,
    code: str,
    message: str,
    now_ms: int,
    http_status: int | None = None,
) -> list[Outcome]:
    """The head call failed for good (retries are the dispatcher's job, not the fold's)."""
    _pop_head(state, call)
    state.last_activity_ms = now_ms
    if error_class == "causal_wait" and call.method == RENAME:
        # No session (never had one, or it closed): hold until the next successful send.
        state.session = False
        if state.held_rename is None:
            call.held_since_ms = now_ms
            call.status = QUEUED
            state.held_rename = call
            return []
        return [Outcome(call, "superseded", code="NEWER_RENAME")]
    outcomes = [_dead(state, call, error_class, code, message, http_status)]
    if error_class == "exhausted":
        state.parked = True
        for later in state.outbox:
            outcomes.append(
                _dead(
                    state,
                    later,
                    "parked",
                    "CHAT_PARKED",
                    f"held behind event {call.event_id} which exhausted retries",
                )
            )
        state.outbox = []
        if state.held_rename is not None:
            outcomes.append(
                _dead(
                    state,
                    state.held_rename,
                    "parked",
                    "CHAT_PARKED",
                    f"held behind event {call.event_id} which exhausted retries",
                )
            )
            state.held_rename = None
    return outcomes


def on_late(state: ChatState, call: PendingCall) -> list[Outcome]:
    """An event arrived after its chat gave up waiting for it: applying it now would break
    the chat's order, so it is dead-lettered (a redrive applies it on purpose)."""
    return [
        _dead(
            state,
            call,
            "late",
            "SEQUENCE_GAP_EXPIRED",
            "arrived after its chat stopped waiting for it (gap timeout or full reorder "
            "buffers); later events of the chat were applied",
        )
    ]


def on_tick(state: ChatState, now_ms: int, config: FoldConfig) -> list[Outcome]:
    """Time passes: a rename held past its timeout is dead-lettered."""
    held = state.held_rename
    if held is not None and now_ms - held.held_since_ms >= config.rename_wait_timeout_ms:
        state.held_rename = None
        return [
            _dead(
                state,
                held,
                "causal_wait",
                "CHAT_RENAMING_FAILED",
                "the chat got no session (no successful send) within the rename timeout",
            )
        ]
    return []


def on_restore(state: ChatState, policy: str) -> list[Outcome]:
    """After a restart: a call that was in flight has an unknown outcome; apply the policy.

    `resend` re-queues it (a send may then appear twice on the portal; it is counted and
    recorded), `dead-letter` hands it to a human. Idempotent methods are always re-sent.
    """
    if not state.outbox or state.outbox[0].status != IN_FLIGHT:
        return []
    head = state.outbox[0]
    if head.method == SEND and policy == "dead-letter":
        state.outbox.pop(0)
        return [
            _dead(
                state,
                head,
                "ambiguous",
                "UNKNOWN_OUTCOME",
                "the send was in flight when the previous process stopped; "
                "check the chat before redriving",
            )
        ]
    head.status = QUEUED
    return [Outcome(head, "ambiguous_resent", code="UNKNOWN_OUTCOME")]


def on_lookup(
    state: ChatState,
    call: PendingCall,
    verdict: str,
    result: dict[str, Any] | None,
    policy: str,
    reason: str,
    now_ms: int,
) -> list[Outcome]:
    """The head send, whose outcome was unknown, was looked up on the portal.

    `present`: it took effect (as `on_success`, `result` naming where the chat lives);
    `missing`: it never did, and goes out again (queued at the head, nothing recorded
    beyond the resend); `fallback`: the lookup could not tell (`reason`), so `policy`
    decides: `resend` queues it again (the caller records `ambiguous_resent`),
    `dead-letter` hands it to a human.
    """
    if verdict == "present":
        return on_success(state, call, result, now_ms)
    if verdict == "fallback" and policy == "dead-letter":
        _pop_head(state, call)
        state.last_activity_ms = now_ms
        return [
            _dead(
                state,
                call,
                "ambiguous",
                "UNKNOWN_OUTCOME",
                f"the send's outcome is unknown and looking it up on the portal failed "
                f"({reason}); check the chat before redriving",
            )
        ]
    call.status = QUEUED
    return []


def _pop_head(state: ChatState, call: PendingCall) -> None:
    if not state.outbox or state.outbox[0] is not call:
        raise RuntimeError(f"call {call.event_id} is not the head of its chat's outbox")
    state.outbox.pop(0)
