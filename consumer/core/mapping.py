"""Which Bitrix24 method an event calls and with what: the event -> request element mapping.

Pure. Field names follow the reference (`MESSAGES[] = {user, message, chat}` for the
message methods, `{im, message, chat}` for statuses, flat params for `chat.name.set`).

The `user` block is what the portal keeps as the customer's profile: every send, update
and delete rewrites the stored profile from the block it carries whenever the block's hash
changes, blanking what is absent and naming a customer without names "Guest"
(`connectors/base.php::preparationUserFields`). So a chat sends one whole block, the last
full one it was given (`chat_user_block`), and display fields are cleaned to what the
portal accepts (`user_block`) instead of costing the customer's message.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from consumer.core.events import (
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    ReadConfirmed,
)

SEND = "imconnector.send.messages"
UPDATE = "imconnector.update.messages"
DELETE = "imconnector.delete.messages"
RENAME = "imconnector.chat.name.set"
DELIVERY = "imconnector.send.status.delivery"
READING = "imconnector.send.status.reading"

# Methods taking a MESSAGES array: calls of one portal/connector/line coalesce into one request.
BATCHABLE = frozenset({SEND, UPDATE, DELETE, DELIVERY, READING})

METHOD_OF_KIND = {
    "MessageSent": SEND,
    "MessageEdited": UPDATE,
    "MessageDeleted": DELETE,
    "ChatRenamed": RENAME,
    "DeliveryConfirmed": DELIVERY,
    "ReadConfirmed": READING,
}

# `name` and `last_name`: letters of any language, spaces, hyphens and apostrophes, at most
# 25 characters each (docs `imconnector-send-messages.md`, "User Object").
NAME_MAX = 25
# Apostrophes as keyboards type them; the docs allow the ASCII one.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_SPACES = re.compile(r"\s+")
# An external user's EMAIL is the one display field `CUser::CheckFields` validates (main
# module `classes/general/user.php`: `check_email($email, true)`, else "Incorrect E-Mail" and
# the customer is not created). The pattern follows `check_email`: dot-atoms of letters,
# digits and `=_+~'!$&*^`|#%/?{}-`, `@`, dot-separated labels of letters, digits and `-`,
# the last one 2-20 characters long; at most 320 characters in all.
_ATOM = r"[\w=+~'!$&*^`|#%/?{}-]+"
_DOMAIN_CHAR = r"(?:[^\W_]|-)"
_EMAIL = re.compile(
    rf"{_ATOM}(?:\.{_ATOM})*@(?:{_DOMAIN_CHAR}+\.)+{_DOMAIN_CHAR}{{2,20}}", re.IGNORECASE
)
EMAIL_MAX = 320


def clean_name(value: str) -> str | None:
    """`value` as the portal accepts a name: letters (any script, with their marks), spaces,
    `-` and `'`, at most 25 characters; None when no letter is left."""
    kept = "".join(
        ch if unicodedata.category(ch)[0] in "LM" or ch in "-'" else " " if ch.isspace() else ""
        for ch in unicodedata.normalize("NFC", value.translate(_APOSTROPHES))
    )
    name = _SPACES.sub(" ", kept).strip(" ")[:NAME_MAX].rstrip(" ")
    return name if any(unicodedata.category(ch)[0] == "L" for ch in name) else None


def clean_email(value: str) -> str | None:
    """`value` if the portal accepts it as an email (surrounding spaces removed), else None."""
    email = value.strip()
    if len(email) > EMAIL_MAX or _EMAIL.fullmatch(email) is None:
        return None
    return email


def user_block(user: ExternalUser) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The `user` block for `user` and the display fields that had to be cleaned (changed
    or dropped) so that the portal accepts it."""
    block: dict[str, Any] = {"id": user.id}
    cleaned: list[str] = []
    for field, clean in (("name", clean_name), ("last_name", clean_name), ("email", clean_email)):
        value = getattr(user, field)
        if not value:
            continue
        kept = clean(value)
        if kept != value:
            cleaned.append(field)
        if kept:
            block[field] = kept
    for field in ("url", "gender", "phone"):
        value = getattr(user, field)
        if value:
            block[field] = value
    if user.picture_url:
        block["picture"] = {"url": user.picture_url}
    return block, tuple(cleaned)


def chat_user_block(
    event: ChatEvent, known: Mapping[str, Any] | str | None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The `user` block `event` sends and the fields cleaned in it.

    `known` is the block the chat sent last (a bare id from callers that only kept that).
    An event without `user`, or whose `user` is the known customer's id alone, sends the
    known block unchanged: the portal's hash sees no change and keeps the profile. An event
    with a profile sends its own whole block (and it becomes the known one).
    """
    known_block = {"id": known} if isinstance(known, str) else known
    user = event.user
    if user is None or (_id_only(user) and known_block and known_block.get("id") == user.id):
        return dict(known_block or {"id": ""}), ()
    return user_block(user)


def _id_only(user: ExternalUser) -> bool:
    return not (
        user.name
        or user.last_name
        or user.picture_url
        or user.url
        or user.gender
        or user.email
        or user.phone
    )


def _seconds(millis: int) -> int:
    return millis // 1000


def element_for(
    event: ChatEvent, known_user: Mapping[str, Any] | str | None
) -> tuple[str, dict[str, Any]]:
    """Return `(method, element)` for `event`; `known_user` is the `user` block the chat
    sent last (see `chat_user_block`)."""
    return element_with_user(event, chat_user_block(event, known_user)[0])


def element_with_user(event: ChatEvent, user: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return `(method, element)` for `event` carrying the `user` block `user`."""
    payload = event.payload
    chat: dict[str, Any] = {"id": event.chat_id}
    if isinstance(payload, MessageSent):
        message: dict[str, Any] = {"id": payload.message_id, "date": _seconds(event.occurred_at)}
        if payload.text is not None:
            message["text"] = payload.text
        if payload.files:
            message["files"] = [
                {"url": f.url, **({"name": f.name} if f.name else {})} for f in payload.files
            ]
        if payload.disable_crm:
            message["disable_crm"] = "Y"
        if payload.operator_id is not None:
            message["user_id"] = payload.operator_id
        if payload.chat_name:
            chat["name"] = payload.chat_name
        if payload.chat_url:
            chat["url"] = payload.chat_url
        return SEND, {"user": user, "message": message, "chat": chat}
    if isinstance(payload, MessageEdited):
        message = {"id": payload.message_id, "date": _seconds(event.occurred_at)}
        if payload.text is not None:
            message["text"] = payload.text
        if payload.files:
            message["files"] = [
                {"url": f.url, **({"name": f.name} if f.name else {})} for f in payload.files
            ]
        return UPDATE, {"user": user, "message": message, "chat": chat}
    if isinstance(payload, MessageDeleted):
        return DELETE, {
            "user": user,
            "message": {"id": payload.message_id},
            "chat": chat,
        }
    if isinstance(payload, DeliveryConfirmed):
        message = {"id": list(payload.message_ids)}
        if payload.delivered_at is not None:
            message["date"] = _seconds(payload.delivered_at)
        return DELIVERY, {
            "im": {"chat_id": payload.im_chat_id, "message_id": payload.im_message_id},
            "message": message,
            "chat": chat,
        }
    if isinstance(payload, ReadConfirmed):
        return READING, {
            "im": {"chat_id": payload.im_chat_id, "message_id": payload.im_message_id},
            "message": {"id": list(payload.message_ids)},
            "chat": chat,
        }
    assert isinstance(payload, ChatRenamed)
    params: dict[str, Any] = {"CHAT_ID": event.chat_id, "NAME": payload.name}
    uid = user.get("id")
    if uid:
        params["USER_ID"] = uid
    return RENAME, params
