"""`ChatEvent` <-> the Avro record (fastavro's dict, payload in tuple notation), and the
JSON shape `imconnector-consumer produce` reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from consumer.codec.bundle import NAMESPACE
from consumer.core.events import (
    PAYLOAD_KINDS,
    ChatEvent,
    ChatRenamed,
    DeliveryConfirmed,
    ExternalUser,
    File,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    Payload,
    ReadConfirmed,
)
from consumer.errors import SchemaMismatch


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _files(items: Any) -> tuple[File, ...]:
    return tuple(File(url=f["url"], name=f.get("name")) for f in items or ())


def _payload_from(name: str, body: Mapping[str, Any]) -> Payload:
    short = name.rsplit(".", 1)[-1]
    if short == "MessageSent":
        return MessageSent(
            message_id=body["message_id"],
            text=body.get("text"),
            files=_files(body.get("files")),
            chat_name=body.get("chat_name"),
            chat_url=body.get("chat_url"),
            disable_crm=bool(body.get("disable_crm", False)),
            operator_id=body.get("operator_id"),
        )
    if short == "MessageEdited":
        return MessageEdited(
            message_id=body["message_id"], text=body.get("text"), files=_files(body.get("files"))
        )
    if short == "MessageDeleted":
        return MessageDeleted(message_id=body["message_id"])
    if short == "ChatRenamed":
        return ChatRenamed(name=body["name"])
    if short == "DeliveryConfirmed":
        delivered = body.get("delivered_at")
        return DeliveryConfirmed(
            im_chat_id=int(body["im_chat_id"]),
            im_message_id=int(body["im_message_id"]),
            message_ids=tuple(body["message_ids"]),
            delivered_at=None if delivered is None else _millis(delivered),
        )
    if short == "ReadConfirmed":
        return ReadConfirmed(
            im_chat_id=int(body["im_chat_id"]),
            im_message_id=int(body["im_message_id"]),
            message_ids=tuple(body["message_ids"]),
        )
    raise SchemaMismatch(f"unknown payload branch {name!r}", code="UNKNOWN_PAYLOAD")


def event_from_record(record: Mapping[str, Any]) -> ChatEvent:
    """Build a `ChatEvent` from a fastavro record read with `return_record_name=True`."""
    payload_raw = record["payload"]
    if not isinstance(payload_raw, tuple):
        raise SchemaMismatch("payload union without a branch name", code="UNKNOWN_PAYLOAD")
    user_raw = record.get("user")
    user = ExternalUser(**user_raw) if user_raw else None
    return ChatEvent(
        event_id=str(record["event_id"]),
        portal=record["portal"],
        connector=record["connector"],
        line=int(record["line"]),
        chat_id=record["chat_id"],
        occurred_at=_millis(record["occurred_at"]),
        payload=_payload_from(payload_raw[0], payload_raw[1]),
        sequence=record.get("sequence"),
        user=user,
    )


def event_from_json(doc: Mapping[str, Any]) -> ChatEvent:
    """A `ChatEvent` from the JSON shape of `imconnector-consumer produce`.

    `{"portal", "connector", "line", "chat_id", "sequence"?, "event_id"?, "occurred_at"?,
    "user"?: {...}, "type": "MessageSent", "payload": {...}}`
    """
    kind = doc.get("type")
    if kind not in PAYLOAD_KINDS:
        raise ValueError(f"'type' must be one of {', '.join(PAYLOAD_KINDS)}, got {kind!r}")
    record = {
        "event_id": doc.get("event_id") or str(uuid.uuid4()),
        "portal": doc["portal"],
        "connector": doc["connector"],
        "line": int(doc["line"]),
        "chat_id": str(doc["chat_id"]),
        "sequence": doc.get("sequence"),
        "occurred_at": int(doc.get("occurred_at") or time.time() * 1000),
        "user": doc.get("user"),
        "payload": (str(kind), dict(doc.get("payload") or {})),
    }
    return event_from_record(record)


def _payload_record(payload: Payload) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any]
    if isinstance(payload, MessageSent):
        body = {
            "message_id": payload.message_id,
            "text": payload.text,
            "files": [{"url": f.url, "name": f.name} for f in payload.files],
            "chat_name": payload.chat_name,
            "chat_url": payload.chat_url,
            "disable_crm": payload.disable_crm,
            "operator_id": payload.operator_id,
        }
    elif isinstance(payload, MessageEdited):
        body = {
            "message_id": payload.message_id,
            "text": payload.text,
            "files": [{"url": f.url, "name": f.name} for f in payload.files],
        }
    elif isinstance(payload, MessageDeleted):
        body = {"message_id": payload.message_id}
    elif isinstance(payload, ChatRenamed):
        body = {"name": payload.name}
    elif isinstance(payload, DeliveryConfirmed):
        body = {
            "im_chat_id": payload.im_chat_id,
            "im_message_id": payload.im_message_id,
            "message_ids": list(payload.message_ids),
            "delivered_at": payload.delivered_at,
        }
    else:
        body = {
            "im_chat_id": payload.im_chat_id,
            "im_message_id": payload.im_message_id,
            "message_ids": list(payload.message_ids),
        }
    return f"{NAMESPACE}.{payload.kind}", body


def event_to_record(event: ChatEvent) -> dict[str, Any]:
    """The fastavro-writable dict of `event` (payload in tuple notation)."""
    user = event.user
    return {
        "event_id": event.event_id,
        "portal": event.portal,
        "connector": event.connector,
        "line": event.line,
        "chat_id": event.chat_id,
        "sequence": event.sequence,
        "occurred_at": event.occurred_at,
        "user": None
        if user is None
        else {
            "id": user.id,
            "name": user.name,
            "last_name": user.last_name,
            "picture_url": user.picture_url,
            "url": user.url,
            "gender": user.gender,
            "email": user.email,
            "phone": user.phone,
        },
        "payload": _payload_record(event.payload),
    }
