"""Bitrix24 event payloads -> `OperatorEvent`s: PHP-style form bodies, the event envelope,
the `data` of each `OnImConnector*` event, and offline queue records.

Pure: no I/O. Anything that does not have the documented shape raises `MalformedEvent`
naming the field, so the caller can refuse it with a clear reason and count it.

Sources (bitrix24/b24restdocs):
- envelope and form encoding: `api-reference/events/index.md` ("What Comes to the
  Handler": `application/x-www-form-urlencoded`; `event`, `event_handler_id`, `data`,
  `ts`, `auth[...]` with `member_id` and `application_token`);
- `data` per event: `api-reference/imopenlines/imconnector/events/on-im-connector-*.md`;
- offline records (`ID`, `TIMESTAMP_X`, `EVENT_NAME`, `EVENT_DATA`, `MESSAGE_ID`):
  `api-reference/events/event-offline-get.md`; `EVENT_DATA` is the event's `data`
  (Bitrix24 server code `rest/lib/event/sender.php`: `'EVENT_DATA' => $item['DATA']`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from consumer.inbound.contract import Kind, OperatorEvent, OperatorFile, Source, make_event

# `event` values (upper case, as Bitrix24 sends them) -> kind; `event.bind` takes the names.
EVENT_KINDS: dict[str, Kind] = {
    "ONIMCONNECTORMESSAGEADD": "MessageAdd",
    "ONIMCONNECTORMESSAGEUPDATE": "MessageUpdate",
    "ONIMCONNECTORMESSAGEDELETE": "MessageDelete",
    "ONIMCONNECTORDIALOGSTART": "DialogStart",
    "ONIMCONNECTORDIALOGFINISH": "DialogFinish",
    "ONIMCONNECTORSTATUSDELETE": "StatusDelete",
    "ONIMCONNECTORLINEDELETE": "LineDelete",
}
EVENT_NAMES: tuple[str, ...] = tuple(f"OnImConnector{kind}" for kind in EVENT_KINDS.values())
"""The connector events as `event.bind` takes them (`imconnector/events/index.md`)."""

# Bounds for untrusted form bodies: Bitrix24's own events nest 5 deep and carry a few
# dozen fields per message (PHP itself stops at max_input_nesting_level=64).
MAX_FORM_FIELDS = 5000
MAX_FORM_DEPTH = 12
_BRACKETS = re.compile(r"\[([^\]]*)\]")


class MalformedEvent(ValueError):
    """The payload lacks a documented field or has the wrong type there."""


@dataclass(frozen=True, slots=True)
class PushedEvent:
    """The envelope of one POST to an event handler."""

    event: str  # upper case, e.g. ONIMCONNECTORMESSAGEADD
    member_id: str | None
    application_token: str | None
    data: Any
    ts: int | None  # unix seconds

    @property
    def kind(self) -> Kind | None:
        """The connector event kind, None for any other event."""
        return EVENT_KINDS.get(self.event)


def parse_form(body: str) -> dict[str, Any]:
    """`a[b][0][c]=v&...` as PHP's `$_POST` would hold it: nested maps, `a[]` appending,
    maps keyed 0..n-1 turned into lists. Refuses more than `MAX_FORM_FIELDS` fields or a
    deeper nesting than `MAX_FORM_DEPTH` (`MalformedEvent`)."""
    try:
        pairs = parse_qsl(
            body, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except ValueError as exc:
        raise MalformedEvent(f"form body: {exc}") from None
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        head, _, rest = raw_key.partition("[")
        path = [head, *_BRACKETS.findall("[" + rest)] if rest else [head]
        if len(path) > MAX_FORM_DEPTH:
            raise MalformedEvent(f"form field {raw_key[:60]!r} nests deeper than {MAX_FORM_DEPTH}")
        node = root
        for index, part in enumerate(path):
            if part == "":
                part = str(sum(1 for key in node if key.isdigit()))
            if index == len(path) - 1:
                node[part] = value
                break
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
    return {key: _listify(value) for key, value in root.items()}


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(item) for key, item in value.items()}
    keys = list(converted)
    if keys and keys == [str(i) for i in range(len(keys))]:
        return [converted[key] for key in keys]
    return converted


def parse_envelope(form: Mapping[str, Any]) -> PushedEvent:
    """The envelope of a pushed event, from its parsed form body."""
    event = form.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedEvent("no 'event' field")
    auth = form.get("auth")
    auth = auth if isinstance(auth, dict) else {}
    member_id = auth.get("member_id")
    token = auth.get("application_token")
    ts = form.get("ts")
    return PushedEvent(
        event=event.upper(),
        member_id=member_id if isinstance(member_id, str) and member_id else None,
        application_token=token if isinstance(token, str) and token else None,
        data=form.get("data"),
        ts=int(ts) if isinstance(ts, str) and ts.isdigit() else None,
    )


def events_from_data(
    kind: Kind, data: Any, *, portal: str, occurred_at: int, source: Source
) -> list[OperatorEvent]:
    """The `OperatorEvent`s of one event's `data`: one per chat element."""
    stamp: dict[str, Any] = {
        "kind": kind,
        "portal": portal,
        "occurred_at": occurred_at,
        "source": source,
    }
    if kind in ("MessageAdd", "MessageUpdate", "MessageDelete"):
        return _message_events(kind, data, stamp)
    if kind in ("DialogStart", "DialogFinish"):
        return _dialog_events(data, stamp)
    if kind == "StatusDelete":
        # `{"connector": "...", "line": 107}` in lower case (on-im-connector-status-delete.md).
        _, connector, line = _connector_and_line(data)
        return [make_event(**stamp, connector=connector, line=line, chat_id="")]
    # LineDelete: `data` is the line id itself (on-im-connector-line-delete.md).
    return [make_event(**stamp, connector="", line=_int(data, "data", 31), chat_id="")]


def _connector_and_line(data: Any) -> tuple[dict[str, Any], str, int]:
    """`data` as an object, its CONNECTOR and its LINE (any key case)."""
    block = _mapping(data, "data")
    connector = _text(_field(block, "CONNECTOR"), "data.CONNECTOR")
    return block, connector, _int(_field(block, "LINE"), "data.LINE", 31)


def events_from_offline_record(record: Mapping[str, Any], portal: str) -> list[OperatorEvent]:
    """The `OperatorEvent`s of one `event.offline.get` record (`TIMESTAMP_X` is the time)."""
    name = str(record.get("EVENT_NAME") or "").upper()
    kind = EVENT_KINDS.get(name)
    if kind is None:
        raise MalformedEvent(f"EVENT_NAME {name!r} is not a connector event")
    stamp = record.get("TIMESTAMP_X")
    try:
        occurred_at = int(datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except ValueError:
        raise MalformedEvent(f"TIMESTAMP_X {stamp!r} is not an ISO 8601 time") from None
    return events_from_data(
        kind, record.get("EVENT_DATA"), portal=portal, occurred_at=occurred_at, source="pull"
    )


def _message_events(kind: Kind, data: Any, stamp: dict[str, Any]) -> list[OperatorEvent]:
    # CONNECTOR, LINE, MESSAGES[] = {im: {chat_id, message_id}, message: {...}, chat: {id}}
    # (on-im-connector-message-add/update/delete.md).
    block, connector, line = _connector_and_line(data)
    events = []
    for index, raw in enumerate(_list(_field(block, "MESSAGES"), "data.MESSAGES")):
        where = f"data.MESSAGES[{index}]"
        element = _mapping(raw, where)
        im = _mapping(_field(element, "im"), f"{where}.im")
        message = _mapping(_field(element, "message"), f"{where}.message")
        chat = _mapping(_field(element, "chat"), f"{where}.chat")
        ids = _field(message, "id")
        if kind == "MessageAdd":
            message_ids: tuple[str, ...] = ()
        elif isinstance(ids, list):  # MessageUpdate: the stored external ids
            message_ids = tuple(_text(i, f"{where}.message.id[]") for i in ids)
        else:  # MessageDelete: one external id per element
            message_ids = (_text(ids, f"{where}.message.id"),)
        user_id = _field(message, "user_id")
        text = _field(message, "text")
        events.append(
            make_event(
                **stamp,
                connector=connector,
                line=line,
                chat_id=_text(_field(chat, "id"), f"{where}.chat.id"),
                im_chat_id=_int(_field(im, "chat_id"), f"{where}.im.chat_id"),
                im_message_id=_int(_field(im, "message_id"), f"{where}.im.message_id"),
                message_ids=message_ids,
                operator_id=None if user_id in (None, "") else _int(user_id, f"{where}.user_id"),
                text=text if isinstance(text, str) else None,
                files=_files(_field(message, "files")),
            )
        )
    return events


def _dialog_events(data: Any, stamp: dict[str, Any]) -> list[OperatorEvent]:
    # CONNECTOR, LINE, DATA[] = {connector: {connector_id, line_id, chat_id, user_id},
    # session: {id, ...}, chat: {id}, user: {id}} (on-im-connector-dialog-start.md). The
    # server fills connector.chat_id with the external chat id and chat.id with the Bitrix24
    # chat (reference §4, imopenlines/lib/connector.php::preparationDataOnSession).
    block, connector, line = _connector_and_line(data)
    events = []
    for index, raw in enumerate(_list(_field(block, "DATA"), "data.DATA")):
        where = f"data.DATA[{index}]"
        element = _mapping(raw, where)
        inner = _mapping(_field(element, "connector"), f"{where}.connector")
        session = _mapping(_field(element, "session"), f"{where}.session")
        chat = _field(element, "chat")
        im_chat = _field(chat, "id") if isinstance(chat, dict) else None
        events.append(
            make_event(
                **stamp,
                connector=connector,
                line=line,
                chat_id=_text(_field(inner, "chat_id"), f"{where}.connector.chat_id"),
                im_chat_id=None if im_chat is None else _int(im_chat, f"{where}.chat.id"),
                session_id=_int(_field(session, "id"), f"{where}.session.id"),
            )
        )
    return events


def _files(value: Any) -> tuple[OperatorFile, ...]:
    """`message.files[]` entries with a `link` (reference §4: name, type, mime, link, size)."""
    if not isinstance(value, list):
        return ()
    files = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("link"), str):
            continue
        size = entry.get("size")
        files.append(
            OperatorFile(
                link=entry["link"],
                name=entry["name"] if isinstance(entry.get("name"), str) else None,
                mime=entry["mime"] if isinstance(entry.get("mime"), str) else None,
                size=int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
            )
        )
    return tuple(files)


def _field(block: Any, name: str) -> Any:
    """`block[name]`, case-insensitively: form keys arrive as the sender wrote them."""
    if not isinstance(block, dict):
        return None
    if name in block:
        return block[name]
    lowered = name.lower()
    for key, value in block.items():
        if str(key).lower() == lowered:
            return value
    return None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedEvent(f"{where} is missing or not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if isinstance(value, dict):  # a PHP array with non-sequential keys
        value = list(value.values())
    if not isinstance(value, list) or not value:
        raise MalformedEvent(f"{where} is missing or not a non-empty array")
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise MalformedEvent(f"{where} is missing or empty")
    return str(value)


def _int(value: Any, where: str, bits: int = 63) -> int:
    """An integer field (JSON number or form string) that fits the Avro type it goes to."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        number = int(value)
    if number is None or not -(2**bits) <= number < 2**bits:
        raise MalformedEvent(f"{where} is missing or not an integer")
    return number
