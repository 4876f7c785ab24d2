"""The portal's events: `event.bind`/`unbind`/`get`, the offline queue (`event.offline.get`,
`.clear`, `.error`, `.list`), and raising `OnImConnector*` events when an operator answers.

Online handlers get a form-encoded POST from a background "queue server" thread, once and
without retries; offline handlers get a queue record. `OperatorDesk` is the demo's
operator: now and then it answers a customer message. Like the rest of the simulator this
module follows the real portal, refusals included, and each rule names its source:

[DOC] bitrix24/b24restdocs `api-reference/events/{index,event-bind,event-get,event-unbind,
offline-events,event-offline-get,event-offline-clear,event-offline-error,
event-offline-list}.md`, `api-reference/imopenlines/imconnector/events/*.md`.
[SRC] the Bitrix24 server: `rest/lib/api/event.php` (`Bitrix\\Rest\\Api\\Event`, every
method here), `rest/lib/eventoffline.php` (`EventOfflineTable`: MESSAGE_ID, the merge,
reservations, errors), `rest/lib/event/sender.php` (what an offline record holds).

Not simulated: administrator checks (every token here is the administrator's), the
`rest_offline_extended` plan check of `clear=0`, `auth_type`, `options`/`onOfflineEvent`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import random
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from consumer.simulator.errors import ERROR_ARGUMENT, RestError, argument_error
from consumer.simulator.params import as_array, as_text, php_intval

logger = logging.getLogger("consumer.simulator")

ERROR_EVENT_NOT_FOUND = "ERROR_EVENT_NOT_FOUND"
ERROR_CORE = "ERROR_CORE"
LIST_LIMIT = 50  # IRestService::LIST_LIMIT: event.offline.get's default limit, list's page
PROCESS_ID_LIFETIME = 2_952_000.0  # [SRC] eventoffline.php: reservations live 30 days

# The events an imconnector app may bind ([DOC] imconnector/events/index.md), plus
# ONOFFLINEEVENT, which may not be bound offline ([SRC] event.php: `disableOffline`).
CONNECTOR_EVENTS = (
    "ONIMCONNECTORMESSAGEADD",
    "ONIMCONNECTORMESSAGEUPDATE",
    "ONIMCONNECTORMESSAGEDELETE",
    "ONIMCONNECTORDIALOGSTART",
    "ONIMCONNECTORDIALOGFINISH",
    "ONIMCONNECTORSTATUSDELETE",
    "ONIMCONNECTORLINEDELETE",
)
ONLINE_ONLY_EVENTS = ("ONOFFLINEEVENT",)
# [SRC] event.get/list/offline.* filter and order only by these fields.
GET_FIELDS = ("ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID")
LIST_FIELDS = (*GET_FIELDS, "PROCESS_ID", "ERROR")


@dataclass
class BoundHandler:
    """One `event.bind`: an online handler URL, or an offline binding (empty handler)."""

    event: str
    handler: str
    connector_id: str

    @property
    def offline(self) -> bool:
        return self.handler == ""


@dataclass
class OfflineRecord:
    """A row of the offline queue (`b_rest_event_offline`)."""

    id: int
    timestamp: float
    message_id: str
    event_name: str
    data: Any
    additional: dict[str, Any]
    connector_id: str
    process_id: str = ""
    error: int = 0

    def as_dict(self, *, with_process: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "ID": str(self.id),
            "TIMESTAMP_X": _iso(self.timestamp),
            "EVENT_NAME": self.event_name,
            "EVENT_DATA": self.data,
            "EVENT_ADDITIONAL": self.additional,
            "MESSAGE_ID": self.message_id,
        }
        if with_process:  # event.offline.list also shows the reservation and error flag
            row["PROCESS_ID"] = self.process_id
            row["ERROR"] = str(self.error)
        return row

    def field(self, name: str) -> Any:
        return {
            "ID": self.id,
            "TIMESTAMP_X": self.timestamp,
            "EVENT_NAME": self.event_name,
            "MESSAGE_ID": self.message_id,
            "PROCESS_ID": self.process_id,
            "ERROR": self.error,
        }[name]


@dataclass(frozen=True)
class Paged:
    """A list result with the REST navigation keys `total` and `next` beside `result`."""

    items: list[Any]
    total: int
    next: int | None


@dataclass
class Delivery:
    """One POST of an online event to its handler (the queue server never retries)."""

    event: str
    handler: str
    status: int | None = None
    error: str | None = None


def _iso(ts: float) -> str:
    # [SRC] CRestUtil::convertDateTime: ISO 8601 with the offset, whole seconds.
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def php_form(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """`value` as PHP's http_build_query writes it: `data[MESSAGES][0][im][chat_id]=1807`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from php_form(item, f"{prefix}[{key}]" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from php_form(item, f"{prefix}[{index}]")
    elif value is None:
        return  # http_build_query skips nulls
    elif isinstance(value, bool):
        yield prefix, "1" if value else "0"
    else:
        yield prefix, str(value)


def encode_form(value: dict[str, Any]) -> bytes:
    """The body of an event POST (`application/x-www-form-urlencoded`)."""
    return "&".join(
        f"{quote(key, safe='[]')}={quote(item, safe='')}" for key, item in php_form(value)
    ).encode()


class EventHub:
    """Event bindings, the offline queue and the queue server of one portal.

    Not thread-safe except `deliver_pending`/`close`: the portal's lock guards the rest.
    `auth` returns the `auth` block of an event for the user who caused it (the portal
    mints a token pair, as Bitrix24 does for that user).
    """

    def __init__(self, clock: Callable[[], float], auth: Callable[[int], dict[str, Any]]) -> None:
        self._clock = clock
        self._auth = auth
        self.application_token = secrets.token_hex(16)
        self.handlers: list[BoundHandler] = []
        self.offline: list[OfflineRecord] = []
        self.deliveries: list[Delivery] = []
        self._next_id = 1
        self._outbox: queue.Queue[tuple[Delivery, bytes] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._delivered = threading.Condition()
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "event.bind": self.bind,
            "event.unbind": self.unbind,
            "event.get": self.get,
            "event.offline.get": self.offline_get,
            "event.offline.clear": self.offline_clear,
            "event.offline.error": self.offline_error,
            "event.offline.list": self.offline_list,
        }

    # -- bindings ------------------------------------------------------------------------

    def bind(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventBind; [DOC] event-bind.md."""
        name = as_text(params.get("EVENT")).upper()
        event_type = as_text(params.get("EVENT_TYPE")).lower() or "online"
        handler = as_text(params.get("HANDLER"))
        connector_id = as_text(params.get("AUTH_CONNECTOR"))
        if not name:
            raise argument_error("EVENT")
        if event_type not in ("online", "offline"):
            raise RestError(ERROR_ARGUMENT, "Value must be one of {online|offline}")
        if event_type == "offline":
            handler = ""  # "Useless for offline type": the server drops it
        elif not handler:
            raise argument_error("HANDLER")
        elif urlsplit(handler).scheme not in ("http", "https"):
            raise RestError(ERROR_ARGUMENT, "Handler URL is not valid")
        if name not in CONNECTOR_EVENTS and name not in ONLINE_ONLY_EVENTS:
            raise RestError(ERROR_EVENT_NOT_FOUND, "Event not found")
        if event_type == "offline" and name in ONLINE_ONLY_EVENTS:
            raise RestError(ERROR_ARGUMENT, "Offline event cannot be registered for this event.")
        binding = BoundHandler(name, handler, connector_id)
        if binding in self.handlers:
            # EventTable::add refuses a second identical handler (its message text is not
            # in the sources read; the code and the wrapping text are [SRC] event.php).
            raise RestError(ERROR_CORE, "Unable to set event handler: Handler already binded", 400)
        self.handlers.append(binding)
        return True

    def unbind(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventUnbind: returns how many bindings were removed."""
        name = as_text(params.get("EVENT")).upper()
        event_type = as_text(params.get("EVENT_TYPE")).lower() or "online"
        handler = as_text(params.get("HANDLER"))
        if not name:
            raise argument_error("EVENT")
        if event_type not in ("online", "offline"):
            raise RestError(ERROR_ARGUMENT, "Value must be one of {online|offline}")
        if event_type == "offline":
            handler = ""
        elif not handler:
            raise argument_error("HANDLER")
        connector_id = as_text(params.get("AUTH_CONNECTOR"))
        kept = [
            h
            for h in self.handlers
            if not (
                h.event == name
                and h.handler == handler
                and (event_type == "online" or h.connector_id == connector_id)
            )
        ]
        count = len(self.handlers) - len(kept)
        self.handlers = kept
        return {"count": count}

    def get(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventGet: online entries with handler, offline with connector_id."""
        del params
        return [
            {"event": h.event, "connector_id": h.connector_id, "offline": 1}
            if h.offline
            else {"event": h.event, "handler": h.handler, "auth_type": "0", "offline": 0}
            for h in self.handlers
        ]

    # -- raising events -------------------------------------------------------------------

    def raise_event(self, name: str, data: dict[str, Any], user_id: int) -> None:
        """Bitrix24 raised event `name`: queue an offline record for each offline binding
        and a POST for each online one (sent later by the queue-server thread)."""
        now = self._clock()
        for binding in self.handlers:
            if binding.event != name:
                continue
            if binding.offline:
                self._store_offline(name, data, binding.connector_id, user_id, now)
            else:
                body = {
                    "event": name,
                    "event_handler_id": str(self.handlers.index(binding) + 1),
                    "data": data,
                    "ts": str(int(now)),
                    "auth": {**self._auth(user_id), "application_token": self.application_token},
                }
                delivery = Delivery(name, binding.handler)
                self.deliveries.append(delivery)
                self._outbox.put((delivery, encode_form(body)))
                self._start_worker()

    def _store_offline(
        self, name: str, data: dict[str, Any], connector_id: str, user_id: int, now: float
    ) -> None:
        """[SRC] EventOfflineTable::callEvent: MESSAGE_ID = md5(EVENT_NAME|json(EVENT_DATA));
        a record with the same MESSAGE_ID and connector that is not reserved is updated
        (time and data), not added ([DOC] offline-events.md: the queue keeps the latest
        state of an object)."""
        encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        message_id = hashlib.md5(f"{name}|{encoded}".encode(), usedforsecurity=False).hexdigest()
        additional = {"user_id": user_id}  # [SRC] event.php: only the user id is returned
        for record in self.offline:
            if (
                record.message_id == message_id
                and record.connector_id == connector_id
                and record.process_id == ""
            ):
                record.timestamp, record.data, record.additional = now, data, additional
                return
        self.offline.append(
            OfflineRecord(
                id=self._next_id,
                timestamp=now,
                message_id=message_id,
                event_name=name,
                data=data,
                additional=additional,
                connector_id=connector_id,
            )
        )
        self._next_id += 1

    # -- the offline queue ---------------------------------------------------------------

    def offline_get(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventOfflineGet. Without `process_id`: reserve up to `limit`
        unreserved records (filter, order) under a new process id; with it: select that
        process's records again. `clear` (default 1) deletes what was selected."""
        clear = php_intval(params["CLEAR"]) if params.get("CLEAR") is not None else 1
        process_id = as_text(params.get("PROCESS_ID")).strip() if "PROCESS_ID" in params else None
        limit = php_intval(params["LIMIT"]) if params.get("LIMIT") is not None else LIST_LIMIT
        if limit <= 0:
            raise RestError(ERROR_ARGUMENT, "Value must be positive integer")
        want_errors = php_intval(params.get("ERROR")) == 1
        connector_id = as_text(params.get("AUTH_CONNECTOR"))
        matches = _filter(params.get("FILTER"), GET_FIELDS)
        order = _order(params.get("ORDER"), GET_FIELDS, default=("TIMESTAMP_X", False))
        self._expire_reservations()

        def candidates(process: str) -> list[OfflineRecord]:
            rows = [
                r
                for r in self.offline
                if r.connector_id == connector_id
                and r.error == (1 if want_errors else 0)
                and r.process_id == process
                and matches(r)
            ]
            return order(rows)[:limit]

        returned_process: str | None = process_id
        if process_id is None:
            process_id = secrets.token_hex(16)  # Random::getString(32)
            for record in candidates(""):
                record.process_id = process_id
            returned_process = None if clear else process_id
        selected = candidates(process_id)
        if clear and selected:
            gone = {id(r) for r in self.offline if r.process_id == process_id}
            self.offline = [r for r in self.offline if id(r) not in gone]
        return {
            "process_id": returned_process,
            "events": [r.as_dict(with_process=False) for r in selected],
        }

    def offline_clear(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventOfflineClear: delete a process's records, all of them or
        those named by `message_id` (32-character values) or else by `id` (positive ints)."""
        if "PROCESS_ID" not in params:
            raise argument_error("PROCESS_ID")
        process_id = as_text(params["PROCESS_ID"]).strip()
        connector_id = as_text(params.get("AUTH_CONNECTOR"))
        chosen: Callable[[OfflineRecord], bool] = lambda record: True  # noqa: E731
        if "MESSAGE_ID" in params:
            message_ids = as_array(params["MESSAGE_ID"])
            if message_ids is None or any(len(as_text(m).strip()) != 32 for m in message_ids):
                raise RestError(ERROR_ARGUMENT, "Value must be array of MESSAGE_ID values")
            wanted = {as_text(m).strip() for m in message_ids}
            chosen = lambda record: record.message_id in wanted  # noqa: E731
        elif "ID" in params:
            ids = as_array(params["ID"])
            if ids is None or any(php_intval(i) <= 0 for i in ids):
                raise RestError(ERROR_ARGUMENT, "Value must be array of integers")
            wanted_ids = {php_intval(i) for i in ids}
            chosen = lambda record: record.id in wanted_ids  # noqa: E731
        self.offline = [
            r
            for r in self.offline
            if not (r.process_id == process_id and r.connector_id == connector_id and chosen(r))
        ]
        return True

    def offline_error(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventOfflineError + EventOfflineTable::markError: the named
        records of this process get ERROR=1 and leave the process (they stay in the queue,
        for `event.offline.get` with error=1 and `event.offline.list`); records with those
        MESSAGE_IDs reserved by another process or not reserved are deleted."""
        if "PROCESS_ID" not in params:
            raise argument_error("PROCESS_ID")
        process_id = as_text(params["PROCESS_ID"]).strip()
        message_ids = as_array(params.get("MESSAGE_ID"))
        if message_ids is None:
            raise RestError(ERROR_ARGUMENT, "Value must be array of MESSAGE_ID values")
        wanted = {as_text(m) for m in message_ids}
        connector_id = as_text(params.get("AUTH_CONNECTOR"))
        kept = []
        for record in self.offline:
            if record.connector_id != connector_id or record.message_id not in wanted:
                kept.append(record)
            elif record.error:
                kept.append(record)  # already marked: untouched (`AND ERROR=0`)
            elif record.process_id == process_id:
                record.error, record.process_id = 1, ""
                kept.append(record)
        self.offline = kept
        return True

    def offline_list(self, params: dict[str, Any]) -> Any:
        """[SRC] event.php::eventOfflineList: read the queue without changing it; pages of
        50 (`start`), `PROCESS_ID` and `ERROR` shown and filterable, default order ID."""
        connector_id = as_text(params.get("AUTH_CONNECTOR"))
        matches = _filter(params.get("FILTER"), LIST_FIELDS)
        order = _order(params.get("ORDER"), LIST_FIELDS, default=("ID", False))
        self._expire_reservations()
        rows = order([r for r in self.offline if r.connector_id == connector_id and matches(r)])
        start = max(0, php_intval(params.get("START")))
        page = rows[start : start + LIST_LIMIT]
        more = start + LIST_LIMIT < len(rows)
        return Paged(
            [r.as_dict(with_process=True) for r in page],
            total=len(rows),
            next=start + LIST_LIMIT if more else None,
        )

    def _expire_reservations(self) -> None:
        """[SRC] EventOfflineTable::cleanProcessAgent: reserved records older than 30 days
        are deleted."""
        horizon = self._clock() - PROCESS_ID_LIFETIME
        self.offline = [r for r in self.offline if not (r.process_id and r.timestamp < horizon)]

    # -- the queue server --------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._deliver_loop, name="simulator-event-queue", daemon=True
            )
            self._worker.start()

    def _deliver_loop(self) -> None:
        """POST each queued event once; a failure is recorded, never retried ([DOC]
        events/index.md "No retries")."""
        with httpx.Client(timeout=10.0) as client:
            while (item := self._outbox.get()) is not None:
                delivery, body = item
                try:
                    response = client.post(
                        delivery.handler,
                        content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                    delivery.status = response.status_code
                except httpx.HTTPError as exc:
                    delivery.error = type(exc).__name__
                with self._delivered:
                    self._delivered.notify_all()

    def wait_delivered(self, count: int, timeout: float) -> bool:
        """Block until `count` POSTs have been attempted (tests, the demo)."""
        with self._delivered:
            return self._delivered.wait_for(
                lambda: sum(1 for d in self.deliveries if d.status or d.error) >= count, timeout
            )

    def close(self) -> None:
        """Stop the queue-server thread."""
        if self._worker is not None:
            self._outbox.put(None)
            self._worker.join(timeout=5)
            self._worker = None

    def snapshot(self) -> dict[str, Any]:
        """Bindings, the offline queue and the POSTs made, for `GET /_sim/events`."""
        return {
            "application_token": self.application_token,
            "handlers": self.get({}),
            "offline": [r.as_dict(with_process=True) for r in self.offline],
            "deliveries": [
                {"event": d.event, "handler": d.handler, "status": d.status, "error": d.error}
                for d in self.deliveries
            ],
        }


def _filter(raw: Any, fields: tuple[str, ...]) -> Callable[[OfflineRecord], bool]:
    """A record predicate from a REST filter `{"<op>FIELD": value}` (op =, !, !=, >, <, >=,
    <=, none meaning =), on the fields the method allows."""
    if raw is None or raw == "":
        return lambda record: True
    if not isinstance(raw, dict):
        raise RestError(ERROR_ARGUMENT, "Filter must be an object")
    tests: list[Callable[[OfflineRecord], bool]] = []
    for key, value in raw.items():
        op = ""
        name = str(key)
        for prefix in (">=", "<=", "!=", "=", ">", "<", "!"):
            if name.startswith(prefix):
                op, name = prefix, name[len(prefix) :]
                break
        name = name.upper()
        if name not in fields:
            raise RestError(ERROR_ARGUMENT, f"Filter field {name} is not allowed")
        tests.append(_comparison(name, op or "=", value))
    return lambda record: all(test(record) for test in tests)


def _comparison(name: str, op: str, value: Any) -> Callable[[OfflineRecord], bool]:
    def coerce(record: OfflineRecord) -> tuple[Any, Any]:
        actual = record.field(name)
        if name == "TIMESTAMP_X":
            try:
                return actual, datetime.fromisoformat(as_text(value)).timestamp()
            except ValueError:
                raise RestError(ERROR_ARGUMENT, f"{value!r} is not a date and time") from None
        if isinstance(actual, int):
            return actual, php_intval(value)
        return actual, as_text(value)

    def test(record: OfflineRecord) -> bool:
        actual, expected = coerce(record)
        return bool(
            {
                "=": actual == expected,
                "!": actual != expected,
                "!=": actual != expected,
                ">": actual > expected,
                "<": actual < expected,
                ">=": actual >= expected,
                "<=": actual <= expected,
            }[op]
        )

    return test


def _order(
    raw: Any, fields: tuple[str, ...], default: tuple[str, bool]
) -> Callable[[list[OfflineRecord]], list[OfflineRecord]]:
    """Sort by `{FIELD: ASC|DESC}` (first field wins), then by ID."""
    name, descending = default
    if isinstance(raw, dict) and raw:
        key, direction = next(iter(raw.items()))
        if str(key).upper() in fields:
            name, descending = str(key).upper(), as_text(direction).upper() == "DESC"
    return lambda rows: sorted(
        rows, key=lambda r: (r.field(name), r.id if not descending else -r.id), reverse=descending
    )


class OperatorDesk:
    """The demo's operators: every `interval` seconds, answer one customer message that has
    no answer yet (`Portal.operator_answer`, which raises OnImConnectorMessageAdd)."""

    def __init__(
        self,
        answer: Callable[[], dict[str, Any] | None],
        interval: float = 1.0,
    ) -> None:
        self._answer = answer
        self._interval = interval
        self._stop = threading.Event()
        self.answered: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="simulator-operators", daemon=True)

    def start(self) -> OperatorDesk:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval * random.uniform(0.5, 1.5)):
            try:
                posted = self._answer()
            except Exception:
                logger.exception("the demo operator could not answer")
                continue
            if posted is not None:
                self.answered.append(posted)


def waiting_chats(chats: Iterator[Any]) -> list[Any]:
    """Chats whose last message came from the customer: someone should answer them."""
    return [chat for chat in chats if chat.messages and chat.messages[-1].direction == "in"]


def message_add_data(posted: dict[str, Any], text: str, author_id: int) -> dict[str, Any]:
    """The `data` of OnImConnectorMessageAdd for one operator message ([DOC]
    on-im-connector-message-add.md: CONNECTOR, LINE, MESSAGES[{im, message, chat}])."""
    return {
        "CONNECTOR": posted["connector"],
        "LINE": posted["line"],
        "MESSAGES": [
            {
                "im": dict(posted["im"]),
                "message": {"user_id": author_id, "text": text},
                "chat": dict(posted["chat"]),
            }
        ],
    }
