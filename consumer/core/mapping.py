"""Which Bitrix24 method an event calls and with what: the event -> request element mapping.

Pure. Field names follow the reference (`MESSAGES[] = {user, message, chat}` for the
message methods, `{im, message, chat}` for statuses, flat params for `chat.name.set`).
"""

from __future__ import annotations

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


def _user_block(user: ExternalUser | None, fallback_id: str | None) -> dict[str, Any]:
    if user is None:
        return {"id": fallback_id or ""}
    block: dict[str, Any] = {"id": user.id}
    for name in ("name", "last_name", "url", "gender", "email", "phone"):
        value = getattr(user, name)
        if value:
            block[name] = value
    if user.picture_url:
        block["picture"] = {"url": user.picture_url}
    return block


def _seconds(millis: int) -> int:
    return millis // 1000


def element_for(event: ChatEvent, user_id: str | None) -> tuple[str, dict[str, Any]]:
    """Return `(method, element)` for `event`; `user_id` is the chat's last known user."""
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
        return SEND, {"user": _user_block(event.user, user_id), "message": message, "chat": chat}
    if isinstance(payload, MessageEdited):
        message = {"id": payload.message_id, "date": _seconds(event.occurred_at)}
        if payload.text is not None:
            message["text"] = payload.text
        if payload.files:
            message["files"] = [
                {"url": f.url, **({"name": f.name} if f.name else {})} for f in payload.files
            ]
        return UPDATE, {"user": _user_block(event.user, user_id), "message": message, "chat": chat}
    if isinstance(payload, MessageDeleted):
        return DELETE, {
            "user": _user_block(event.user, user_id),
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
    uid = event.user.id if event.user is not None else user_id
    if uid:
        params["USER_ID"] = uid
    return RENAME, params
