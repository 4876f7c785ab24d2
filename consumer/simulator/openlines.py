"""Open Lines state of one portal and the `imconnector.*` method handlers (reference §3).

Handlers take the upper-cased request parameters and return the method's `result`
or raise `RestError`. No HTTP and no locking: the caller (Portal) serialises access.

A message and its external id are two writes, as on the server: the message is added
(`imopenlines/lib/connector.php::addMessage`, `:575`), then its `CONNECTOR_MID` is set
(`:650`, after tracker work, no transaction), in the stored form `connector_mid` gives.
`between_writes` is called between the two: a fault there kills the request and leaves
the message without an id (reference `bitrix24-readback.md` §5 caveat 2).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from consumer.simulator.errors import (
    APPLICATION_REGISTRATION_ERROR_POINT,
    APPLICATION_UNREGISTRATION_ERROR,
    CHAT_RENAMING_FAILED,
    CONNECTOR_ID_REQUIRED,
    ERROR_ARGUMENT,
    GUEST_NAME,
    ICON_REQUIRED,
    IMCONNECTOR_NO_CORRECT_PROVIDER,
    NAME_REQUIRED,
    NO_PLACEMENT_HANDLER,
    NOT_ACTIVE_LINE,
    NOT_ALL_THE_REQUIRED_DATA,
    PROXY_NO_ADD_USER,
    PROXY_NO_USER_IM,
    WRONG_EMAIL,
    RestError,
    argument_error,
    element_texts,
)
from consumer.simulator.params import (
    as_array,
    as_text,
    library_is_empty,
    lower_keys_deep,
    php_empty,
    php_intval,
    upper_keys,
)

IMCONNECTOR_NOT_SPECIFIED_CORRECT_CONNECTOR = "IMCONNECTOR_NOT_SPECIFIED_CORRECT_CONNECTOR"

BUILT_IN_CONNECTORS = {
    "livechat": "Live chat",
    "network": "Bitrix24.Network",
    "telegrambot": "Telegram",
}
"""Shown by imconnector.list next to the custom ones; not usable by the custom-connector methods."""

USER_NAME_MAX = 25
BOOLEAN_FLAGS = {
    # flag name → default; only exact JSON true/false override it (§3.1).
    "DEL_EXTERNAL_MESSAGES": True,
    "EDIT_INTERNAL_MESSAGES": True,
    "DEL_INTERNAL_MESSAGES": True,
    "NEWSLETTER": True,
    "NEED_SYSTEM_MESSAGES": True,
    "NEED_SIGNATURE": True,
    "CHAT_GROUP": False,
}

Direction = Literal["in", "out"]


@dataclass
class Connector:
    """A custom connector registered by the app (imconnector.register)."""

    id: str
    name: str
    icon: dict[str, Any]
    placement_handler: str
    flags: dict[str, bool]
    icon_disabled: dict[str, Any] = field(default_factory=dict)
    comment: str = ""

    @property
    def chat_group(self) -> bool:
        return self.flags["CHAT_GROUP"]


@dataclass
class LineStatus:
    """A connector's status on one line: activation sets the flags, set.error raises `error`."""

    active: bool = True
    connection: bool = True
    register: bool = True
    error: bool = False

    @property
    def configured(self) -> bool:
        return self.active and self.connection and self.register

    @property
    def available(self) -> bool:
        return self.configured and not self.error


@dataclass
class TechnicalUser:
    """The Bitrix user standing for one external `user.id` (XML_ID `connector|user.id`).

    `fields` are the user fields the connector last wrote (`connectors/base.php::
    preparationUserFields`: NAME, LAST_NAME, PERSONAL_WWW, PERSONAL_GENDER, ...), `md5` the
    hash of the submitted block that wrote them (`UF_CONNECTOR_MD5`).
    """

    id: int
    connector: str
    external_id: str
    fields: dict[str, str]
    md5: str
    updates: int = 0

    @property
    def name(self) -> str:
        return self.fields.get("NAME", "")

    @property
    def last_name(self) -> str:
        return self.fields.get("LAST_NAME", "")


@dataclass
class ChatMessage:
    """A Bitrix chat message; `external_ids` is its CONNECTOR_MID (one inbound, a list outbound)."""

    im_id: int
    direction: Direction
    author_id: int
    text: str
    external_ids: list[str]
    files: list[Any] = field(default_factory=list)
    deleted: bool = False
    sending: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "im_id": self.im_id,
            "direction": self.direction,
            "author_id": self.author_id,
            "external_id": self.external_ids[0] if len(self.external_ids) == 1 else None,
            "external_ids": list(self.external_ids),
            "text": self.text,
            "files": list(self.files),
            "deleted": self.deleted,
            "sending": self.sending,
        }


@dataclass
class Chat:
    """An Open Lines chat with its current session, keyed by the conversation key (§2)."""

    key: str
    connector: str
    line: int
    external_chat_id: str
    user_id: int
    chat_id: int
    session_id: int
    name: str
    messages: list[ChatMessage] = field(default_factory=list)
    session_open: bool = True
    last_activity: float = 0.0
    # Session ID -> [START_ID, END_ID] of the messages it covers (`imopenlines/lib/
    # session.php:359-367, 485-494`): START_ID is the session's first message (0 until it
    # has one), END_ID the last one once it closed (0 while open).
    sessions: dict[int, list[int]] = field(default_factory=dict)
    operator_id: int = 0  # the operator who answered (0: the session waits in the queue)

    def snapshot(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "line": self.line,
            "external_chat_id": self.external_chat_id,
            "user_id": str(self.user_id),
            "session_id": str(self.session_id),
            "session_open": self.session_open,
            "chat_id": str(self.chat_id),
            "operator_id": self.operator_id,
            "name": self.name,
            "messages": [message.snapshot() for message in self.messages],
        }


def conversation_key(connector: str, line: int, external_chat_id: str, user_id: int) -> str:
    """Open Lines "user code" `connector|line|chat.id|bitrix user id` (user 0 in group mode)."""
    return f"{connector}|{line}|{external_chat_id}|{user_id}"


def _valid_person_name(name: str) -> bool:
    """Letters of any language (a combining mark counts with its letter), spaces, hyphens and
    apostrophes; at most 25 characters (docs `imconnector-send-messages.md`, "User Object").
    Checked when a customer is created."""
    return len(name) <= USER_NAME_MAX and all(
        unicodedata.category(ch)[0] in "LM" or ch in " -'" for ch in name
    )


# `CUser::CheckFields` for an external user checks EMAIL with `check_email($email, true)`
# (main module, classes/general/user.php): dot-atoms, `@`, labels, a last label of 2-20.
_EMAIL = re.compile(
    r"[\w=+~'!$&*^`|#%/?{}-]+(?:\.[\w=+~'!$&*^`|#%/?{}-]+)*@(?:(?:[^\W_]|-)+\.)+(?:[^\W_]|-){2,20}",
    re.IGNORECASE,
)


def _valid_email(email: str) -> bool:
    return len(email) <= 320 and _EMAIL.fullmatch(email) is not None


def split_full_name(user: dict[str, Any]) -> dict[str, Any]:
    """`base.php::getFullName`: without a last name, a `name` of exactly two words (split
    on one space) becomes name and last name."""
    if library_is_empty(user.get("last_name")):
        parts = as_text(user.get("name")).split(" ")
        if len(parts) == 2:
            user = {**user, "name": parts[0], "last_name": parts[1]}
    return user


def profile_fields(user: dict[str, Any], language: str) -> dict[str, str]:
    """`base.php::preparationUserFields`: the user fields a submitted block writes. What the
    block lacks is blanked (LAST_NAME, PERSONAL_WWW, PERSONAL_GENDER), and a customer with
    neither name nor last name is named "Guest"; EMAIL and PERSONAL_MOBILE change only when
    given."""
    fields: dict[str, str] = {}
    if user.get("name") is not None:  # PHP isset()
        fields["NAME"] = "" if library_is_empty(user["name"]) else as_text(user["name"])
    last_name = user.get("last_name")
    fields["LAST_NAME"] = "" if library_is_empty(last_name) else as_text(last_name)
    if library_is_empty(fields.get("NAME")) and not fields["LAST_NAME"]:
        title = user.get("title")
        guest = GUEST_NAME.get(language, GUEST_NAME["en"])
        fields["NAME"] = guest if library_is_empty(title) else as_text(title)
    fields["PERSONAL_WWW"] = "" if php_empty(user.get("url")) else as_text(user["url"])
    gender = user.get("gender")
    if php_empty(gender):
        fields["PERSONAL_GENDER"] = ""
    elif gender in ("male", "female"):
        fields["PERSONAL_GENDER"] = "M" if gender == "male" else "F"
    picture = user.get("picture")
    if isinstance(picture, dict) and picture:
        fields["PERSONAL_PHOTO"] = as_text(picture.get("url"))
    for key, target in (("title", "TITLE"), ("email", "EMAIL"), ("phone", "PERSONAL_MOBILE")):
        if not library_is_empty(user.get(key)):
            fields[target] = as_text(user[key])
    return fields


def _refusals(user: dict[str, Any]) -> list[str]:
    """Why the portal would not save this customer: `CUser` refuses a bad EMAIL (the text it
    leaves comes first in `ERRORS`), and names outside the documented rule are refused."""
    refusals: list[str] = []
    email = user.get("email")
    if not library_is_empty(email) and not _valid_email(as_text(email)):
        refusals.append(WRONG_EMAIL)
    names = (as_text(user.get("name")).strip(), as_text(user.get("last_name")).strip())
    if not all(_valid_person_name(name) for name in names) and not refusals:
        refusals.append(PROXY_NO_ADD_USER)
    return refusals


def _md5(user: dict[str, Any]) -> str:
    """Stands for `md5(serialize($user))`: order, keys and values of the block all count."""
    return hashlib.md5(orjson.dumps(user), usedforsecurity=False).hexdigest()


def _block(element: dict[str, Any], name: str) -> dict[str, Any]:
    """A nested block of a MESSAGES element, or {} when it is missing or not an object."""
    value = element.get(name)
    return value if isinstance(value, dict) else {}


class RequestDied(Exception):
    """The request died between two writes (a fatal error, the 60 s cut-off): what it wrote
    stays, nothing after it runs, and the client is answered HTTP 500."""


# `CIMMessageParam::Set` trims a scalar value and keeps 100 characters
# (`im/classes/general/im_message_param.php:142`); a longer one is stored as 97 characters
# and "..." (`:195-198`, reference `bitrix24-readback.md` §1).
CONNECTOR_MID_MAX = 100
_PHP_TRIM = " \t\n\r\0\x0b"


def connector_mid(value: Any) -> list[str]:
    """What the portal stores as a message's `CONNECTOR_MID` for the external `message.id`
    `value`: nothing for a PHP-falsy id (`connector.php:623` skips it), else the id trimmed
    and cut to 100 characters."""
    if php_empty(value) or isinstance(value, list | dict):
        return []
    stored = as_text(value).strip(_PHP_TRIM)
    if len(stored) > CONNECTOR_MID_MAX:
        stored = stored[: CONNECTOR_MID_MAX - 3] + "..."
    return [stored] if stored else []


class _ElementFailure(Exception):
    """One MESSAGES element failed (for these reasons); the call goes on with the next one."""

    def __init__(self, *codes: str) -> None:
        super().__init__(", ".join(codes))
        self.codes = list(codes)


class OpenLines:
    """Connectors, line statuses, technical users, chats and messages of one portal."""

    def __init__(
        self,
        *,
        language: str = "en",
        clock: Callable[[], float] | None = None,
        session_idle_close_s: float = 0.0,
    ) -> None:
        self.language = language  # of the texts in ERRORS and of "Guest"
        self.clock: Callable[[], float] = clock or (lambda: 0.0)
        # An Open Lines session closes after this long without a message (0: never), so
        # a rename after that fails with CHAT_RENAMING_FAILED until the next message.
        self.session_idle_close_s = session_idle_close_s
        self.profile_updates = 0  # customer profiles rewritten by a changed user block
        self.guest_overwrites = 0  # ... of which renamed a named customer "Guest"
        self.connectors: dict[str, Connector] = {}
        self.lines: dict[tuple[str, int], LineStatus] = {}
        self.connector_data: dict[tuple[str, int], dict[str, Any]] = {}
        self.users: dict[tuple[str, str], TechnicalUser] = {}
        self.chats: dict[str, Chat] = {}
        self.deliveries: list[dict[str, Any]] = []
        # Called between a message's insert and its CONNECTOR_MID write; raises
        # `RequestDied` when a fault kills the request there (set by the Portal).
        self.between_writes: Callable[[], None] = lambda: None
        self._messages_by_im_id: dict[int, tuple[Chat, ChatMessage]] = {}
        self._chats_by_id: dict[int, Chat] = {}
        self._chats_by_session: dict[int, Chat] = {}
        self._users_by_id: dict[int, TechnicalUser] = {}
        self._user_ids = itertools.count(101)
        self._chat_ids = itertools.count(1701)
        self._session_ids = itertools.count(301)
        self._message_ids = itertools.count(10_001)
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "imconnector.register": self.register,
            "imconnector.unregister": self.unregister,
            "imconnector.activate": self.activate,
            "imconnector.status": self.status,
            "imconnector.connector.data.set": self.connector_data_set,
            "imconnector.list": self.list_connectors,
            "imconnector.send.messages": self.send_messages,
            "imconnector.update.messages": self.update_messages,
            "imconnector.delete.messages": self.delete_messages,
            "imconnector.send.status.delivery": self.send_status_delivery,
            "imconnector.send.status.reading": self.send_status_reading,
            "imconnector.chat.name.set": self.chat_name_set,
            "imconnector.set.error": self.set_error,
        }

    # -- setup helpers (not REST) --------------------------------------------------------

    def preset_line(self, connector_id: str, line: int, *, chat_group: bool = False) -> None:
        """Register (if needed) and activate a connector on a line, so demos need no setup."""
        connector_id = connector_id.lower()
        if connector_id not in self.connectors:
            self.connectors[connector_id] = Connector(
                id=connector_id,
                name=connector_id,
                icon={"DATA_IMAGE": "data:image/svg+xml,%3Csvg%3E%3C/svg%3E"},
                placement_handler="http://127.0.0.1/placement",
                flags={**BOOLEAN_FLAGS, "CHAT_GROUP": chat_group},
            )
        self.lines[(connector_id, line)] = LineStatus()

    def clear_chats(self) -> None:
        """Forget conversations (users, chats, messages, deliveries); keep connectors and lines."""
        self.users.clear()
        self.chats.clear()
        self.deliveries.clear()
        self.profile_updates = 0
        self.guest_overwrites = 0
        self._messages_by_im_id.clear()
        self._chats_by_id.clear()
        self._chats_by_session.clear()
        self._users_by_id.clear()

    def post_operator_message(self, chat_id: int, text: str, author_id: int = 1) -> dict[str, Any]:
        """An operator writes into a chat: the message waits ("sending") for send.status.delivery.

        Returns the `im` block an OnImConnectorMessageAdd event would carry.
        """
        chat = self._chats_by_id.get(chat_id)
        if chat is None:
            raise KeyError(f"no chat with CHAT_ID {chat_id}")
        message = ChatMessage(
            im_id=next(self._message_ids),
            direction="out",
            author_id=author_id,
            text=text,
            external_ids=[],
            sending=True,
        )
        chat.messages.append(message)
        self._messages_by_im_id[message.im_id] = (chat, message)
        if author_id and self.session_alive(chat):
            chat.operator_id = author_id  # the operator who answers takes the session
        return {
            "im": {"chat_id": chat.chat_id, "message_id": message.im_id},
            "chat": {"id": chat.external_chat_id},
            "line": chat.line,
            "connector": chat.connector,
        }

    def element_count(self, params: dict[str, Any]) -> int:
        """How many elements a call carries; the operating cost is charged per element."""
        messages = as_array(params.get("MESSAGES"))
        return max(1, len(messages)) if messages is not None else 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "connectors": {
                cid: {
                    "name": c.name,
                    "placement_handler": c.placement_handler,
                    "chat_group": c.chat_group,
                    "flags": dict(c.flags),
                }
                for cid, c in self.connectors.items()
            },
            "lines": [
                {
                    "connector": connector,
                    "line": line,
                    "active": status.active,
                    "connection": status.connection,
                    "register": status.register,
                    "error": status.error,
                    "status": status.available,
                }
                for (connector, line), status in self.lines.items()
            ],
            "connector_data": {
                f"{connector}|{line}": dict(data)
                for (connector, line), data in self.connector_data.items()
            },
            "users": {
                f"{u.connector}|{u.external_id}": {
                    "id": str(u.id),
                    "name": u.name,
                    "last_name": u.last_name,
                    "profile": dict(u.fields),
                    "updates": u.updates,
                }
                for u in self.users.values()
            },
            "profiles": {
                "updates": self.profile_updates,
                "guest_overwrites": self.guest_overwrites,
            },
            "chats": {key: chat.snapshot() for key, chat in self.chats.items()},
            "deliveries": [dict(d) for d in self.deliveries],
        }

    # -- connector lifecycle -------------------------------------------------------------

    def register(self, params: dict[str, Any]) -> Any:
        def fail(code: str, description: str) -> RestError:
            # register reports validation failures inside an HTTP 200 result (§3.1).
            return RestError(code, description, 200, in_result=True)

        raw_id = params.get("ID")
        if not isinstance(raw_id, str) or not raw_id.strip():
            raise fail(CONNECTOR_ID_REQUIRED, "The connector ID is not specified")
        connector_id = raw_id.strip().lower()
        if "." in connector_id:
            raise fail(APPLICATION_REGISTRATION_ERROR_POINT, "The connector ID contains a dot")
        name = as_text(params.get("NAME")).strip()
        if not name:
            raise fail(NAME_REQUIRED, "The connector name is not specified")
        icon = params.get("ICON")
        icon = upper_keys(icon) if isinstance(icon, dict) else {}
        if php_empty(icon.get("DATA_IMAGE")):
            raise fail(ICON_REQUIRED, "The connector icon (ICON.DATA_IMAGE) is not specified")
        handler = as_text(params.get("PLACEMENT_HANDLER")).strip()
        if not handler:
            raise fail(NO_PLACEMENT_HANDLER, "The placement handler is not specified")
        icon_disabled = params.get("ICON_DISABLED")
        self.connectors[connector_id] = Connector(
            id=connector_id,
            name=name,
            icon=icon,
            icon_disabled=upper_keys(icon_disabled) if isinstance(icon_disabled, dict) else {},
            placement_handler=handler,
            # Only exact booleans count; "true"/1 fall back to the default like the server does.
            flags={
                flag: value if isinstance(value := params.get(flag), bool) else default
                for flag, default in BOOLEAN_FLAGS.items()
            },
            comment=as_text(params.get("COMMENT")),
        )
        return {"result": True}

    def unregister(self, params: dict[str, Any]) -> Any:
        connector_id = as_text(params.get("ID")).strip().lower()
        if connector_id not in self.connectors:
            raise RestError(
                APPLICATION_UNREGISTRATION_ERROR,
                f"Failed to unregister connector '{connector_id}' of this application",
                200,
                in_result=True,
            )
        del self.connectors[connector_id]
        for key in [key for key in self.lines if key[0] == connector_id]:
            del self.lines[key]
        for key in [key for key in self.connector_data if key[0] == connector_id]:
            del self.connector_data[key]
        return {"result": True}

    def activate(self, params: dict[str, Any]) -> Any:
        connector_id, line = self._connector_and_line(params)
        if params.get("ACTIVE") is None:
            raise argument_error("ACTIVE")
        # PHP `!empty()`: "N" and "false" are non-empty strings and therefore activate.
        if php_empty(params["ACTIVE"]):
            self.lines.pop((connector_id, line), None)
        else:
            self.lines[(connector_id, line)] = LineStatus()
        return True

    def status(self, params: dict[str, Any]) -> Any:
        connector_id = self._required_text(params, "CONNECTOR").lower()
        line = php_intval(params.get("LINE"))
        status = self.lines.get((connector_id, line))
        return {
            "LINE": line,
            "CONNECTOR": connector_id,
            "ERROR": bool(status and status.error),
            "CONFIGURED": bool(status and status.configured),
            "STATUS": bool(status and status.available),
        }

    def connector_data_set(self, params: dict[str, Any]) -> Any:
        connector_id, line = self._connector_and_line(params)
        data = params.get("DATA")
        if not isinstance(data, dict) or not data:
            raise argument_error("DATA")
        # The code merges non-empty values into what is stored (docs say overwrite, §3.4).
        stored = self.connector_data.setdefault((connector_id, line), {})
        stored.update({k: v for k, v in upper_keys(data).items() if not php_empty(v)})
        return True

    def list_connectors(self, params: dict[str, Any]) -> Any:
        del params
        return {**BUILT_IN_CONNECTORS, **{cid: c.name for cid, c in self.connectors.items()}}

    def set_error(self, params: dict[str, Any]) -> Any:
        connector_id, line = self._connector_and_line(params)
        status = self.lines.get((connector_id, line))
        if status is not None:
            status.error = True
        return {"SUCCESS": True, "DATA": status is not None}

    # -- inbound messages ----------------------------------------------------------------

    def send_messages(self, params: dict[str, Any]) -> Any:
        connector, line, messages = self._message_call(params, check_structure=True)
        results = []
        for element in messages:
            results.append(self._each(element, lambda el: self._send_one(connector, line, el)))
        return {"SUCCESS": True, "DATA": {"RESULT": results}}

    def update_messages(self, params: dict[str, Any]) -> Any:
        connector, line, messages = self._message_call(params, check_structure=False)
        results = []
        for element in messages:
            results.append(self._each(element, lambda el: self._update_one(connector, line, el)))
        return {"SUCCESS": True, "DATA": {"RESULT": results}}

    def delete_messages(self, params: dict[str, Any]) -> Any:
        connector, line, messages = self._message_call(params, check_structure=False)
        results = []
        for element in messages:
            results.append(self._each(element, lambda el: self._delete_one(connector, line, el)))
        return {"SUCCESS": True, "DATA": {"RESULT": results}}

    def _send_one(self, connector: str, line: int, element: dict[str, Any]) -> dict[str, Any]:
        # `base.php::processingInputNewAndUpdateMessage`: the user first (so a message
        # without text still creates or updates its customer), then text or files.
        user, reply = self._element_user(connector, element)
        message = element["message"] if isinstance(element["message"], dict) else {}
        chat_block = element["chat"] if isinstance(element["chat"], dict) else {}
        external_chat_id = as_text(chat_block.get("id"))
        if not external_chat_id or not self._has_text_or_files(message):
            raise _ElementFailure(NOT_ALL_THE_REQUIRED_DATA)
        chat = self._chat_for(connector, line, external_chat_id, user)
        if chat is None:
            chat = self._open_chat(connector, line, external_chat_id, user, chat_block)
        elif not self.session_alive(chat):
            # The dialog closed: the next message opens a new session in the same chat.
            self._new_session(chat)
        chat.last_activity = self.clock()
        author = php_intval(message.get("user_id")) or user.id
        # No lookup by message.id first: a repeated send adds a second message (§9.1).
        stored = ChatMessage(
            im_id=next(self._message_ids),
            direction="in",
            author_id=author,
            text=as_text(message.get("text")),
            files=list(files) if isinstance(files := message.get("files"), list) else [],
            external_ids=[],
        )
        chat.messages.append(stored)
        self._messages_by_im_id[stored.im_id] = (chat, stored)
        span = chat.sessions[chat.session_id]
        span[0] = span[0] or stored.im_id
        self.between_writes()  # a request that dies here leaves a message without its id
        stored.external_ids = connector_mid(message.get("id"))
        reply.update(self._echo(element))
        reply["SUCCESS"] = True
        reply["session"] = {"ID": str(chat.session_id), "CHAT_ID": str(chat.chat_id)}
        return reply

    def _update_one(self, connector: str, line: int, element: dict[str, Any]) -> dict[str, Any]:
        user, reply = self._element_user(connector, element)
        message, external_chat_id = self._addressed(element)
        # The same check as a send (`base.php::processingInputNewAndUpdateMessage`).
        if not self._has_text_or_files(message):
            raise _ElementFailure(NOT_ALL_THE_REQUIRED_DATA)
        chat = self._chat_for(connector, line, external_chat_id, user)
        # Only the text is replaced, on every copy carrying that CONNECTOR_MID; no match is
        # a silent success; files on an update change nothing
        # (`imopenlines/lib/connector.php::updateMessage`).
        if chat is not None and not library_is_empty(message.get("text")):
            for stored in self._matching(chat, as_text(message.get("id"))):
                stored.text = as_text(message.get("text"))
            self._keep_alive(chat)
        reply.update(self._echo(element))
        reply["SUCCESS"] = True
        return reply

    def _delete_one(self, connector: str, line: int, element: dict[str, Any]) -> dict[str, Any]:
        # `base.php::processingInputDelMessage`: the user block is processed as on a send.
        user, reply = self._element_user(connector, element)
        _, external_chat_id = self._addressed(element)
        chat = self._chat_for(connector, line, external_chat_id, user)
        if chat is not None:
            for stored in self._matching(chat, as_text(element["message"].get("id"))):
                stored.deleted = True
            self._keep_alive(chat)
        reply.update(self._echo(element))
        reply["SUCCESS"] = True
        return reply

    @staticmethod
    def _has_text_or_files(message: dict[str, Any]) -> bool:
        # `Library::isEmpty`: the text "0" is text.
        return not library_is_empty(message.get("text")) or not php_empty(message.get("files"))

    def session_alive(self, chat: Chat) -> bool:
        """Whether the chat's session is still open (it closes after the idle time, and its
        END_ID is then the chat's last message)."""
        idle = self.session_idle_close_s
        if chat.session_open and idle > 0 and self.clock() - chat.last_activity >= idle:
            chat.session_open = False
            span = chat.sessions[chat.session_id]
            span[1] = chat.messages[-1].im_id if chat.messages else 0
            chat.operator_id = 0
        return chat.session_open

    def _new_session(self, chat: Chat) -> None:
        chat.session_id = next(self._session_ids)
        chat.session_open = True
        chat.sessions[chat.session_id] = [0, 0]
        self._chats_by_session[chat.session_id] = chat

    def chat_of_session(self, session_id: int) -> Chat | None:
        """The chat a session ID belongs to, if any."""
        return self._chats_by_session.get(session_id)

    def chat_by_id(self, chat_id: int) -> Chat | None:
        """The chat with this CHAT_ID, if any."""
        return self._chats_by_id.get(chat_id)

    def user_by_id(self, user_id: int) -> TechnicalUser | None:
        """The technical user (customer) with this Bitrix id, if any."""
        return self._users_by_id.get(user_id)

    def _keep_alive(self, chat: Chat) -> None:
        if self.session_alive(chat):
            chat.last_activity = self.clock()

    # -- outbound message statuses -------------------------------------------------------

    def send_status_delivery(self, params: dict[str, Any]) -> Any:
        connector, line, messages = self._status_call(params)
        for element in messages:
            if not isinstance(element, dict):
                continue
            im = _block(element, "im")
            message = _block(element, "message")
            chat = _block(element, "chat")
            ids = message.get("id")
            external_ids = [as_text(i) for i in ids] if isinstance(ids, list) else [as_text(ids)]
            message_id = php_intval(im.get("message_id"))
            known = self._messages_by_im_id.get(message_id)
            stored_ids = False
            # Only a message still "sending" takes the external ids; repeats change nothing.
            if known is not None and known[1].direction == "out" and known[1].sending:
                known[1].sending = False
                known[1].external_ids = [i for i in external_ids if i]
                stored_ids = True
            self.deliveries.append(
                {
                    "connector": connector,
                    "line": line,
                    "im_chat_id": php_intval(im.get("chat_id")),
                    "im_message_id": message_id,
                    "external_ids": external_ids,
                    "external_chat_id": as_text(chat.get("id")),
                    "stored": stored_ids,
                }
            )
        return {"SUCCESS": True, "DATA": []}

    def send_status_reading(self, params: dict[str, Any]) -> Any:
        # A stub on the server too (§3.11): validate, then report success.
        self._status_call(params)
        return {"SUCCESS": True, "DATA": []}

    def chat_name_set(self, params: dict[str, Any]) -> Any:
        connector_id, line = self._connector_and_line(params)
        external_chat_id = self._required_text(params, "CHAT_ID")
        name = self._required_text(params, "NAME")
        connector = self.connectors.get(connector_id)
        group = connector is not None and connector.chat_group
        external_user = as_text(params.get("USER_ID"))
        if not group and not external_user:
            raise argument_error("USER_ID")
        self._require_active(connector_id, line)
        if group:
            chat = self.chats.get(conversation_key(connector_id, line, external_chat_id, 0))
        else:
            user = self.users.get((connector_id, external_user))
            if user is None:
                # `imopenlines connector.php::onNewChatName` returns false for an unknown
                # user and `rest/customconnectors.php::setChatName` skips results that are
                # not a Result: the answer is SUCCESS and nothing is renamed.
                return {"SUCCESS": True, "DATA": {"RESULT": {}}}
            key = conversation_key(connector_id, line, external_chat_id, user.id)
            chat = self.chats.get(key)
        # The server renames the chat of an open session and never opens one
        # (`Session::load` with SKIP_CREATE): no dialog, or a closed one, fails.
        if chat is None or not self.session_alive(chat):
            raise RestError(CHAT_RENAMING_FAILED, "Failed to rename the chat: no dialog found")
        chat.name = name
        return {"SUCCESS": True, "DATA": {"RESULT": {}}}

    # -- shared pieces ---------------------------------------------------------------------

    def _required_text(self, params: dict[str, Any], name: str) -> str:
        value = params.get(name)
        if php_empty(value) or isinstance(value, list | dict):
            raise argument_error(name)
        return as_text(value).strip()

    def _connector_and_line(self, params: dict[str, Any]) -> tuple[str, int]:
        connector_id = self._required_text(params, "CONNECTOR").lower()
        line = php_intval(params.get("LINE"))
        if line == 0:
            raise argument_error("LINE")
        return connector_id, line

    def _require_active(self, connector_id: str, line: int) -> None:
        status = self.lines.get((connector_id, line))
        if status is None or not status.active:
            raise RestError(NOT_ACTIVE_LINE, "The line is not active for this connector")

    def _message_call(
        self, params: dict[str, Any], *, check_structure: bool
    ) -> tuple[str, int, list[Any]]:
        connector_id, line = self._connector_and_line(params)
        if php_empty(params.get("MESSAGES")):
            raise argument_error("MESSAGES")
        messages = as_array(params["MESSAGES"])
        if messages is None or (check_structure and not all(isinstance(m, dict) for m in messages)):
            raise RestError(
                ERROR_ARGUMENT, "The MESSAGES parameter must be an array of messages (arrays)"
            )
        messages = list(lower_keys_deep(messages))  # one scan of the whole array
        if check_structure and not all(
            all(block in m for block in ("user", "message", "chat")) for m in messages
        ):
            raise RestError(
                ERROR_ARGUMENT, "The incorrect structure of a message inside MESSAGES parameter"
            )
        self._require_active(connector_id, line)
        if connector_id not in self.connectors:
            raise RestError(
                IMCONNECTOR_NOT_SPECIFIED_CORRECT_CONNECTOR,
                "The connector is not specified correctly",
            )
        return connector_id, line, messages

    def _status_call(self, params: dict[str, Any]) -> tuple[str, int, list[Any]]:
        connector_id, line = self._connector_and_line(params)
        if php_empty(params.get("MESSAGES")):
            raise argument_error("MESSAGES")
        messages = as_array(params["MESSAGES"])
        if messages is None:
            raise RestError(
                ERROR_ARGUMENT, "The MESSAGES parameter must be an array of messages (arrays)"
            )
        if connector_id not in self.connectors:
            raise RestError(IMCONNECTOR_NO_CORRECT_PROVIDER, "Failed to initialise the provider")
        return connector_id, line, list(lower_keys_deep(messages))

    def _each(
        self, element: Any, handle: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one element; a failure becomes `SUCCESS: false` + `ERRORS`, not a failed call."""
        try:
            if not isinstance(element, dict):
                raise _ElementFailure(NOT_ALL_THE_REQUIRED_DATA)
            return handle(element)
        except _ElementFailure as failure:
            reply = self._echo(element) if isinstance(element, dict) else {}
            reply.update({"SUCCESS": False, "ERRORS": element_texts(self.language, failure.codes)})
            return reply

    def _element_user(
        self, connector: str, element: dict[str, Any]
    ) -> tuple[TechnicalUser, dict[str, Any]]:
        """Find, create or update the customer of an element (for update and delete too).

        `base.php::processingUser`: the submitted block (two-word names split first)
        rewrites the stored profile whenever its hash differs from the stored one
        (`profile_fields`: absent fields blanked, "Guest" without names). A customer the
        portal refuses fails the element only when it would be created; a refused update
        is swallowed and changes nothing (`updateUser`'s errors are dropped once the user
        id is known).
        """
        user_block = element.get("user")
        if not isinstance(user_block, dict) or not user_block or php_empty(element.get("chat")):
            raise _ElementFailure(NOT_ALL_THE_REQUIRED_DATA)
        external_id = as_text(user_block.get("id")).strip()
        if not external_id:
            raise _ElementFailure(PROXY_NO_USER_IM)
        submitted = split_full_name(
            {k: v for k, v in user_block.items() if k != "skip_phone_validate"}
        )
        digest = _md5(submitted)
        user = self.users.get((connector, external_id))
        if user is None:
            refusals = _refusals(submitted)
            if refusals:
                raise _ElementFailure(*dict.fromkeys([*refusals, PROXY_NO_ADD_USER]))
            user = TechnicalUser(
                id=next(self._user_ids),
                connector=connector,
                external_id=external_id,
                fields=profile_fields(submitted, self.language),
                md5=digest,
            )
            self.users[(connector, external_id)] = user
            self._users_by_id[user.id] = user
        elif user.md5 != digest and not _refusals(submitted):
            fields = profile_fields(submitted, self.language)
            guest = GUEST_NAME.get(self.language, GUEST_NAME["en"])
            if fields.get("NAME") == guest and user.name != guest:
                self.guest_overwrites += 1
            user.fields = {**user.fields, **fields}
            user.md5 = digest
            user.updates += 1
            self.profile_updates += 1
        return user, {"user": str(user.id)}

    @staticmethod
    def _addressed(element: dict[str, Any]) -> tuple[dict[str, Any], str]:
        message = element.get("message")
        chat = element.get("chat")
        if not isinstance(message, dict) or not isinstance(chat, dict):
            raise _ElementFailure(NOT_ALL_THE_REQUIRED_DATA)
        external_chat_id = as_text(chat.get("id"))
        if not external_chat_id or php_empty(message.get("id")):
            raise _ElementFailure(NOT_ALL_THE_REQUIRED_DATA)
        return message, external_chat_id

    def _chat_for(
        self, connector: str, line: int, external_chat_id: str, user: TechnicalUser
    ) -> Chat | None:
        group = self.connectors[connector].chat_group
        key = conversation_key(connector, line, external_chat_id, 0 if group else user.id)
        return self.chats.get(key)

    def _open_chat(
        self,
        connector: str,
        line: int,
        external_chat_id: str,
        user: TechnicalUser,
        chat_block: dict[str, Any],
    ) -> Chat:
        """The first successful message of a conversation creates its chat and session."""
        group = self.connectors[connector].chat_group
        user_part = 0 if group else user.id
        key = conversation_key(connector, line, external_chat_id, user_part)
        default_name = " ".join(part for part in (user.name, user.last_name) if part)
        chat = Chat(
            key=key,
            connector=connector,
            line=line,
            external_chat_id=external_chat_id,
            user_id=user_part,
            chat_id=next(self._chat_ids),
            session_id=next(self._session_ids),
            name=as_text(chat_block.get("name")) or default_name,
            last_activity=self.clock(),
        )
        self.chats[key] = chat
        self._chats_by_id[chat.chat_id] = chat
        chat.sessions[chat.session_id] = [0, 0]
        self._chats_by_session[chat.session_id] = chat
        return chat

    @staticmethod
    def _matching(chat: Chat, external_id: str) -> list[ChatMessage]:
        # The server looks the id up by the stored value (`GetMessageIdByParam(
        # 'CONNECTOR_MID', ...)`, `connector.php:894, 946`): an id the store trimmed or cut
        # (`connector_mid`) is not found, and a message deleted lost its params.
        return [
            message
            for message in chat.messages
            if message.direction == "in"
            and not message.deleted
            and external_id in message.external_ids
        ]

    @staticmethod
    def _echo(element: dict[str, Any]) -> dict[str, Any]:
        """The element's message/chat after processing, plus `extra` flags when set (§3.7)."""
        reply: dict[str, Any] = {}
        message = element.get("message")
        if isinstance(message, dict):
            echoed = {k: v for k, v in message.items() if k not in ("disable_crm",)}
            if "date" in echoed:
                echoed["date"] = {}  # a PHP DateTime serialises as an empty object
            reply["message"] = echoed
        chat = element.get("chat")
        if isinstance(chat, dict):
            echoed_chat = {k: v for k, v in chat.items() if k != "url"}
            if not php_empty(chat.get("url")):
                echoed_chat["description"] = f"Link to the original post: {as_text(chat['url'])}"
            reply["chat"] = echoed_chat
        extra: dict[str, str] = {}
        user = element.get("user")
        if isinstance(user, dict) and as_text(user.get("skip_phone_validate")) == "Y":
            extra["skip_phone_validate"] = "Y"
        if isinstance(message, dict) and as_text(message.get("disable_crm")) == "Y":
            extra["disable_tracker"] = "Y"
        if extra:
            reply["extra"] = extra
        return reply
