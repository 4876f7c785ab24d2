"""Reading Open Lines chats back: `imopenlines.session.history.get` and
`imopenlines.dialog.get`, with their access rules (reference `bitrix24-readback.md` §2 A
and D, §3).

What a client needs from them is each message's external id (`params.connectorMid`, the
`CONNECTOR_MID` the send stored) with its author (`senderid`), and which session a chat
is in (`entityData1`, the chat's LINES_SESSION field: `CRM|CRM_ENTITY_TYPE|CRM_ENTITY_ID|
PAUSE|WAIT_ACTION|ID|...`, `imopenlines/lib/chat.php::getFieldData`; the ID is 0 once the
session closed, as the docs' sample of a finished session shows). Who may read is one
setting of the portal (`access`): the token's user as a portal administrator or with an
Open Lines role that covers every session (`all`), as an operator who sees only the
sessions they answered (`operator`), or with no right to the history at all (`none`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from consumer.simulator.errors import ERROR_METHOD_NOT_FOUND, RestError
from consumer.simulator.openlines import Chat, ChatMessage, OpenLines
from consumer.simulator.params import as_text, php_intval

HISTORY = "imopenlines.session.history.get"
DIALOG = "imopenlines.dialog.get"
ACCESS_DENIED = "ACCESS_DENIED"
ACCESS_ERROR = "ACCESS_ERROR"
MISSING_REQUIRED_PARAM = "MISSING_REQUIRED_PARAM"
INVALID_SESSION_ID = "INVALID_SESSION_ID"

OpenLinesAccess = Literal["all", "operator", "none"]
ACCESS_LEVELS: tuple[OpenLinesAccess, ...] = ("all", "operator", "none")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def _camel(name: str) -> str:
    """`rest.php::objectEncode`'s key rule (`:2383`): CONNECTOR_MID -> connectorMid."""
    head, *rest = name.lower().split("_")
    return head + "".join(part.capitalize() for part in rest)


class SessionReads:
    """The read methods over one portal's `OpenLines`; `user_id` is the token's user."""

    def __init__(
        self,
        openlines: OpenLines,
        user_id: int,
        *,
        access: OpenLinesAccess = "all",
        enabled: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if access not in ACCESS_LEVELS:
            raise ValueError(f"openlines_access must be one of {', '.join(ACCESS_LEVELS)}")
        self.openlines = openlines
        self.user_id = user_id
        self.access: OpenLinesAccess = access
        # False: a portal without these methods (ERROR_METHOD_NOT_FOUND, as for any
        # method the portal does not have).
        self.enabled = enabled
        self.clock = clock or (lambda: 0.0)
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            HISTORY: self.history,
            DIALOG: self.dialog,
        }

    def set_access(self, access: str) -> None:
        """Change who may read (`all`, `operator`, `none`)."""
        if access not in ACCESS_LEVELS:
            raise ValueError(f"openlines_access must be one of {', '.join(ACCESS_LEVELS)}")
        self.access = access

    # -- access ----------------------------------------------------------------------------

    def _may_read(self, chat: Chat) -> bool:
        """`Operator::getSessionHistory` (`operator.php:816-829`): the session's operator,
        or a role whose history right covers the operator (ANY for an administrator,
        `security/rolemanager.php:101-105`); a session still in the queue (no operator)
        is hidden from an operator with SELF rights."""
        if self.access == "all":
            return True
        return self.access == "operator" and chat.operator_id == self.user_id > 0

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise RestError(ERROR_METHOD_NOT_FOUND, "Method not found!", 404)

    # -- imopenlines.session.history.get ---------------------------------------------------

    def history(self, params: dict[str, Any]) -> Any:
        """`rest.php::sessionGetHistory` (`:680-737`): SESSION_ID first; without it,
        CHAT_ID names the chat's latest session (newer servers). Every message of the
        session, with no paging (`im_chat.php:521-535`), keys as `objectEncode` writes
        them (`:2358-2391`)."""
        self._require_enabled()
        session_id = php_intval(params.get("SESSION_ID"))
        if session_id > 0:
            chat = self.openlines.chat_of_session(session_id)
        elif php_intval(params.get("CHAT_ID")) > 0:
            chat = self.openlines.chat_by_id(php_intval(params.get("CHAT_ID")))
            session_id = chat.session_id if chat is not None else 0
        else:
            raise RestError(MISSING_REQUIRED_PARAM, "SESSION_ID or CHAT_ID is required", 400)
        if chat is None:
            raise RestError(INVALID_SESSION_ID, "Session not found", 400)
        if not self._may_read(chat):
            raise RestError(
                ACCESS_DENIED,
                "You cannot open this conversation because you do not have sufficient rights.",
                400,
            )
        self.openlines.session_alive(chat)  # an idle session closes before it is read
        start, end = chat.sessions.get(session_id, [0, 0])
        messages = [
            m for m in chat.messages if start and m.im_id >= start and (not end or m.im_id <= end)
        ]
        senders = {m.author_id for m in messages}
        dialog = f"chat{chat.chat_id}"
        return {
            "chatId": chat.chat_id,
            "canJoin": "Y",
            "canVoteHead": "Y",
            "sessionId": session_id,
            "sessionVoteHead": 0,
            "sessionCommentHead": None,
            "userId": dialog,
            "message": {str(m.im_id): self._message(chat, m) for m in messages},
            "usersMessage": {dialog: [str(m.im_id) for m in reversed(messages)]},
            "users": {str(uid): self._user(uid) for uid in sorted(senders) if uid},
            "openlines": {},
            "userInGroup": [],
            "woUserInGroup": [],
            "chat": {str(chat.chat_id): self._chat_block(chat)},
            "userBlockChat": {},
            "userInChat": {str(chat.chat_id): [chat.user_id] if chat.user_id else []},
            "files": [],
        }

    def _message(self, chat: Chat, message: ChatMessage) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if message.deleted:
            # Soft delete wipes every param and keeps IS_DELETED only
            # (`im/lib/V2/Message/Delete/Strategy/SoftDeletionStrategy.php:41-43`).
            params["IS_DELETED"] = "Y"
        elif message.external_ids:
            params["CONNECTOR_MID"] = list(message.external_ids)
        return {
            "id": str(message.im_id),
            "chatid": str(chat.chat_id),
            "senderid": str(message.author_id),
            "recipientid": f"chat{chat.chat_id}",
            "date": _iso(chat.last_activity),
            "text": "" if message.deleted else message.text,
            "textlegacy": "" if message.deleted else message.text,
            # An empty PHP array encodes as a JSON list (the docs' `"params": []`).
            "params": {_camel(k): v for k, v in params.items()} or [],
        }

    def _user(self, user_id: int) -> dict[str, Any]:
        customer = self.openlines.user_by_id(user_id)
        if customer is None:  # an operator
            return {"id": str(user_id), "name": f"Operator {user_id}", "connector": False}
        return {
            "id": str(user_id),
            "name": " ".join(p for p in (customer.name, customer.last_name) if p),
            "firstName": customer.name,
            "lastName": customer.last_name,
            "connector": True,
            "externalAuthId": "imconnector",
        }

    def _chat_block(self, chat: Chat) -> dict[str, Any]:
        return {
            "id": str(chat.chat_id),
            "name": chat.name,
            "owner": "0",
            "entityType": "LINES",
            "entityId": chat.key,
            "entityData1": self._session_field(chat),
            "entityData2": "",
            "entityData3": "N",
            "type": "lines",
            "messageType": "L",
        }

    def _session_field(self, chat: Chat) -> str:
        """The chat's LINES_SESSION field; the session ID is 0 once the session closed."""
        current = chat.session_id if self.openlines.session_alive(chat) else 0
        return f"N|NONE|0|N|N|{current}|{int(chat.last_activity)}|0|0|0"

    # -- imopenlines.dialog.get ------------------------------------------------------------

    def dialog(self, params: dict[str, Any]) -> Any:
        """`rest.php::dialogGet` (`:170-199`): the chat by CHAT_ID, DIALOG_ID, SESSION_ID or
        USER_CODE (`getChatId`, `:2315-2356`; a USER_CODE finds the chat whose ENTITY_ID it
        is, `chat.php:3417-3438`). No such chat and no access answer alike: ACCESS_ERROR."""
        self._require_enabled()
        chat = self._dialog_chat(params)
        if chat is None or not self._may_read(chat):
            raise RestError(ACCESS_ERROR, "You do not have access to the specified dialog", 400)
        return {
            "avatar": "",
            "color": "#4ba984",
            "date_create": _iso(chat.last_activity),
            "dialog_id": f"chat{chat.chat_id}",
            "entity_data_1": self._session_field(chat),
            "entity_data_2": "",
            "entity_data_3": "",
            "entity_id": chat.key,
            "entity_type": "LINES",
            "extranet": False,
            "id": chat.chat_id,
            "manager_list": [],
            "message_type": "L",
            "name": chat.name,
            "owner": 0,
            "type": "lines",
        }

    def _dialog_chat(self, params: dict[str, Any]) -> Chat | None:
        openlines = self.openlines
        if php_intval(params.get("CHAT_ID")) > 0:
            return openlines.chat_by_id(php_intval(params.get("CHAT_ID")))
        dialog = as_text(params.get("DIALOG_ID"))
        if dialog.startswith("chat") and php_intval(dialog[4:]) > 0:
            return openlines.chat_by_id(php_intval(dialog[4:]))
        if php_intval(params.get("SESSION_ID")) > 0:
            return openlines.chat_of_session(php_intval(params.get("SESSION_ID")))
        code = as_text(params.get("USER_CODE"))
        # The docs allow an `imol|` prefix (`imopenlines-dialog-get.md`, USER_CODE).
        return openlines.chats.get(code.removeprefix("imol|")) if code else None
