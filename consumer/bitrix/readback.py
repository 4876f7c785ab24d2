"""Looking a send of unknown outcome up on the portal, instead of sending it again blind.

`imconnector.send.messages` has no idempotency key, but the portal keeps each element's
external `message.id` with the chat message (`CONNECTOR_MID`), and
`imopenlines.session.history.get {SESSION_ID}` returns it as `params.connectorMid` with
the message's author as `senderid` (reference `bitrix24-readback.md` §1, §2 A). A
`Lookup` decides, for one send, which reads to make and what their answers mean:

* the session is the one the chat's last successful send was answered with; without one,
  `imopenlines.dialog.get {USER_CODE}` names the chat's current session (§2 D), which needs
  the customer's Bitrix user id; without that (the chat's first send was the one in doubt)
  there is nothing to look up;
* the id counts as there when a message of the customer (`senderid` == the Bitrix user id,
  or the operator the send named in `message.user_id`) carries it in the form the portal
  stores it (`stored_forms`): operator messages carry ids too (§5 caveat 6);
* it counts as missing only when the session read is still the chat's current one (the
  chat's session field, `entityData1`, names it): a newer session is read next, and a chat
  without an open session is left to the fallback, since a message added to a closed
  session keeps no id (§5 caveat 3);
* any refusal or unreadable answer ends in the fallback (`Verdict.reason` says which).

Pure: no I/O; the engine makes the reads (`consumer.engine.reconciler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from consumer.core.state import PortalChat, portal_id
from consumer.observability.metrics import RECONCILE_FALLBACK_REASONS

HISTORY = "imopenlines.session.history.get"
DIALOG = "imopenlines.dialog.get"
READ_METHODS = frozenset({HISTORY, DIALOG})

# `CIMMessageParam::Set` keeps `mb_substr(trim($value), 0, 100)`
# (`im/classes/general/im_message_param.php:142`); newer servers store a longer value as
# 97 characters and "..." (`:195-198`). PHP's trim() strips these characters only.
STORED_MAX = 100
_PHP_TRIM = " \t\n\r\0\x0b"
MAX_READS = 3  # dialog.get, the session known, then the chat's newer session

# Why a lookup gave up (the fallback policy then decides): label values of
# `imconnector_send_reconciliations_total{result="fallback", reason}`.
FALLBACK_REASONS = RECONCILE_FALLBACK_REASONS
_ACCESS_CODES = frozenset({"ACCESS_DENIED", "ACCESS_ERROR", "insufficient_scope"})
_MISSING_CODES = frozenset({"ERROR_METHOD_NOT_FOUND", "METHOD_NOT_FOUND"})


def stored_forms(message_id: object) -> frozenset[str]:
    """The values the portal may hold as `CONNECTOR_MID` for the external id `message_id`:
    none for an id it keeps no copy of (empty, "0": `connector.php:623` skips PHP-falsy
    ids), else the trimmed id, cut at 100 characters in either of the servers' forms."""
    if not isinstance(message_id, str | int) or isinstance(message_id, bool):
        return frozenset()
    if str(message_id) in ("", "0"):  # falsy in PHP: no id is written
        return frozenset()
    kept = str(message_id).strip(_PHP_TRIM)
    if not kept:  # `CIMMessageParam::Set` writes no empty value
        return frozenset()
    if len(kept) <= STORED_MAX:
        return frozenset({kept})
    return frozenset({kept[:STORED_MAX], kept[: STORED_MAX - 3] + "..."})


def user_code(connector: str, line: int, chat_id: str, user_id: int) -> str:
    """Open Lines' USER_CODE of a chat: `<connector>|<line>|<external chat id>|<Bitrix user
    id>` (`imopenlines/lib/connector.php:1207-1210`)."""
    return f"{connector.lower()}|{line}|{chat_id}|{user_id}"


@dataclass(frozen=True, slots=True)
class Read:
    """A read to make: a method and its parameters."""

    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a lookup ended: the send is `present` on the portal, `missing` from it, or not
    known (`fallback`, with a `reason` from `FALLBACK_REASONS`); `where` is where the chat
    lives as the reads showed it."""

    outcome: Literal["present", "missing", "fallback"]
    reason: str = ""
    where: PortalChat | None = None


Step = Read | Verdict


def fallback_reason(code: str | None, error_class: str | None) -> str:
    """The fallback reason for a read the portal refused with `code`."""
    if code in _ACCESS_CODES:
        return "access_denied"
    if code in _MISSING_CODES:
        return "method_missing"
    return "read_error"


class Lookup:
    """The reads that tell whether one send reached the portal (see the module)."""

    def __init__(
        self,
        element: dict[str, Any],
        known: PortalChat | None,
        connector: str,
        line: int,
        chat_id: str,
    ) -> None:
        message = element.get("message")
        if not isinstance(message, dict):
            message = {}
        self.forms = stored_forms(message.get("id"))
        self.known = known or PortalChat()
        self._operator = portal_id(message.get("user_id"))  # a send on an operator's behalf
        self._code = user_code(connector, line, chat_id, self.known.user_id)
        self._read: set[int] = set()  # sessions read so far
        self._reads = 0
        self._chat_id = self.known.chat_id

    def first(self) -> Step:
        """The first read, or a verdict when there is nothing to read."""
        if not self.forms:
            return Verdict("fallback", "id_not_kept")
        if self.known.session_id:
            return self._history(self.known.session_id)
        if self.known.user_id:
            self._reads += 1
            return Read(DIALOG, {"USER_CODE": self._code})
        return Verdict("fallback", "no_user")

    def refused(self, code: str | None, error_class: str | None) -> Verdict:
        """A read failed for good (after the dispatcher's retries)."""
        return Verdict("fallback", fallback_reason(code, error_class))

    def answered(self, method: str, result: Any) -> Step:
        """The next read after `result` (the `result` of `method`), or the verdict."""
        if method == DIALOG:
            dialog = parse_dialog(result)
            if dialog is None:
                return Verdict("fallback", "unreadable")
            self._chat_id, current = dialog
            if not current:
                return Verdict("fallback", "session_closed")
            return self._history(current)
        history = parse_history(result)
        if history is None:
            return Verdict("fallback", "unreadable")
        self._chat_id = history.chat_id or self._chat_id
        where = PortalChat(history.session_id, self._chat_id, self.known.user_id)
        authors = {self.known.user_id, self._operator} - {0} or history.connector_users
        if any(sender in authors and self.forms & ids for sender, ids in history.messages):
            return Verdict("present", where=where)
        open_now = history.current_session
        if open_now is None:
            return Verdict("fallback", "unreadable")
        if open_now == history.session_id:
            return Verdict("missing", where=where)
        if open_now and open_now not in self._read and self._reads < MAX_READS:
            return self._history(open_now)  # the chat moved on to a newer session
        return Verdict("fallback", "session_closed")

    def _history(self, session_id: int) -> Step:
        if self._reads >= MAX_READS:
            return Verdict("fallback", "read_error")
        self._reads += 1
        self._read.add(session_id)
        return Read(HISTORY, {"SESSION_ID": session_id})


@dataclass(frozen=True, slots=True)
class History:
    """What a session history answer tells: each message's author and stored ids, the
    chat's current session (None when the answer lacks the chat's session field) and the
    users flagged as connector (customer) users."""

    session_id: int
    chat_id: int
    messages: list[tuple[int, frozenset[str]]]
    current_session: int | None
    connector_users: frozenset[int]


def parse_history(result: Any) -> History | None:
    """`imopenlines.session.history.get`'s result (keys as `rest.php::objectEncode` writes
    them; an empty PHP array comes as `[]`); None for any other shape."""
    if not isinstance(result, dict):
        return None
    session_id = portal_id(result.get("sessionId"))
    chat_id = portal_id(result.get("chatId"))
    raw = result.get("message")
    items = raw.values() if isinstance(raw, dict) else raw if raw == [] else None
    if items is None or not session_id:
        return None
    messages = []
    for item in items:
        if not isinstance(item, dict):
            return None
        params = item.get("params")
        mids = params.get("connectorMid") if isinstance(params, dict) else None
        if isinstance(mids, str):
            mids = [mids]
        ids = frozenset(str(m) for m in mids) if isinstance(mids, list) else frozenset()
        messages.append((portal_id(item.get("senderid")), ids))
    chats = result.get("chat")
    block = chats.get(str(chat_id)) if isinstance(chats, dict) else None
    field = block.get("entityData1") if isinstance(block, dict) else None
    users = result.get("users")
    connector_users = frozenset(
        portal_id(uid)
        for uid, user in (users.items() if isinstance(users, dict) else ())
        if isinstance(user, dict) and user.get("connector") is True
    )
    return History(session_id, chat_id, messages, _session_field(field), connector_users)


def parse_dialog(result: Any) -> tuple[int, int] | None:
    """`imopenlines.dialog.get`'s result as `(CHAT_ID, current session ID)` (0: none open);
    None for any other shape."""
    if not isinstance(result, dict):
        return None
    chat_id = portal_id(result.get("id"))
    current = _session_field(result.get("entity_data_1"))
    if not chat_id or current is None:
        return None
    return chat_id, current


def _session_field(value: Any) -> int | None:
    """The session ID in a chat's LINES_SESSION field (`CRM|CRM_ENTITY_TYPE|CRM_ENTITY_ID|
    PAUSE|WAIT_ACTION|ID|...`, `imopenlines/lib/chat.php::getFieldData`); 0 when the chat
    has no open session; None when the field is not there."""
    if not isinstance(value, str):
        return None
    fields = value.split("|")
    return portal_id(fields[5]) if len(fields) > 5 else None
