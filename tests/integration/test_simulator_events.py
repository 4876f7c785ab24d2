"""The simulator's events: event.bind/get/unbind, the offline queue and pushed events, as
`rest/lib/api/event.php` and `api-reference/events/*.md` describe them (simulator/events.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
from simulator_fixtures import CONNECTOR, LINE, Sim, message, running_simulator

from consumer.inbound.payloads import parse_form

MESSAGE_ADD = "ONIMCONNECTORMESSAGEADD"


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error"])


def open_chat(sim: Sim, chat: str = "c1") -> int:
    """A customer writes first: the chat exists; its Bitrix24 CHAT_ID."""
    assert sim.send(message(f"m-{chat}", "hello", chat=chat)).status_code == 200
    chats = sim.state()["chats"]
    return next(int(c["chat_id"]) for c in chats.values() if c["external_chat_id"] == chat)


def answer(sim: Sim, chat_id: int | None, text: str = "Hi, how can I help?") -> dict[str, Any]:
    response = sim.http.post("/_sim/operator-answer", json={"chat_id": chat_id, "text": text})
    assert response.status_code == 200, response.text
    return dict(response.json())


def bind_offline(sim: Sim, event: str = "OnImConnectorMessageAdd") -> None:
    assert sim.ok("event.bind", {"event": event, "event_type": "offline"}) is True


# -- event.bind / event.get / event.unbind ---------------------------------------------------


def test_bind_offline_and_online_handlers_are_listed_by_event_get(sim: Sim) -> None:
    bind_offline(sim)
    assert sim.ok(
        "event.bind", {"event": "onimconnectormessageupdate", "handler": "https://a.example/h"}
    )
    assert sim.ok("event.get") == [
        {"event": MESSAGE_ADD, "connector_id": "", "offline": 1},
        {
            "event": "ONIMCONNECTORMESSAGEUPDATE",
            "handler": "https://a.example/h",
            "auth_type": "0",
            "offline": 0,
        },
    ]
    removed = sim.ok("event.unbind", {"event": "OnImConnectorMessageAdd", "event_type": "offline"})
    assert removed == {"count": 1}
    assert len(sim.ok("event.get")) == 1


def test_bind_refusals(sim: Sim) -> None:
    def bind(**params: Any) -> Any:
        return sim.call("event.bind", params)

    assert (
        error_of(bind(event="OnNoSuchEvent", event_type="offline"), 400) == "ERROR_EVENT_NOT_FOUND"
    )
    assert error_of(bind(event_type="offline"), 400) == "ERROR_ARGUMENT"
    assert error_of(bind(event="OnImConnectorMessageAdd"), 400) == "ERROR_ARGUMENT"  # no handler
    assert error_of(bind(event="OnImConnectorMessageAdd", event_type="sometimes"), 400) == (
        "ERROR_ARGUMENT"
    )
    assert error_of(bind(event="OnOfflineEvent", event_type="offline"), 400) == "ERROR_ARGUMENT"
    bind_offline(sim)
    assert error_of(bind(event="OnImConnectorMessageAdd", event_type="offline"), 400) == (
        "ERROR_CORE"
    )
    webhook = sim.http.post("/rest/1/abc/event.bind", json={"event": "OnImConnectorMessageAdd"})
    assert error_of(webhook, 403) == "WRONG_AUTH_TYPE"
    assert error_of(sim.call("event.offline.get", {"auth": "nope"}), 401) == "NO_AUTH_FOUND"


# -- the offline queue -----------------------------------------------------------------------


def test_operator_answer_queues_the_documented_record(sim: Sim) -> None:
    bind_offline(sim)
    chat_id = open_chat(sim)
    posted = answer(sim, chat_id)
    got = sim.ok("event.offline.get", {"clear": 0})
    assert isinstance(got["process_id"], str) and len(got["process_id"]) == 32
    [record] = got["events"]
    assert set(record) == {
        "ID",
        "TIMESTAMP_X",
        "EVENT_NAME",
        "EVENT_DATA",
        "EVENT_ADDITIONAL",
        "MESSAGE_ID",
    }
    assert record["EVENT_NAME"] == MESSAGE_ADD
    assert len(record["MESSAGE_ID"]) == 32
    assert record["EVENT_ADDITIONAL"] == {"user_id": 1}
    assert record["EVENT_DATA"] == {
        "CONNECTOR": CONNECTOR,
        "LINE": LINE,
        "MESSAGES": [
            {
                "im": {"chat_id": chat_id, "message_id": posted["im"]["message_id"]},
                "message": {"user_id": 1, "text": "Hi, how can I help?"},
                "chat": {"id": "c1"},
            }
        ],
    }
    # The operator's message waits for its delivery status, like any outbound message.
    messages = next(iter(sim.state()["chats"].values()))["messages"]
    assert messages[-1]["direction"] == "out" and messages[-1]["sending"] is True


def test_a_reserved_batch_is_hidden_until_cleared_and_can_be_selected_again(sim: Sim) -> None:
    bind_offline(sim)
    chat_id = open_chat(sim)
    for n in range(3):
        answer(sim, chat_id, f"answer {n}")
    first = sim.ok("event.offline.get", {"clear": 0, "limit": 2})
    assert len(first["events"]) == 2
    second = sim.ok("event.offline.get", {"clear": 0, "limit": 2})
    assert [e["EVENT_DATA"]["MESSAGES"][0]["message"]["text"] for e in second["events"]] == [
        "answer 2"
    ]
    again = sim.ok("event.offline.get", {"clear": 0, "process_id": first["process_id"]})
    assert again["process_id"] == first["process_id"]
    assert [e["ID"] for e in again["events"]] == [e["ID"] for e in first["events"]]
    listed = sim.call("event.offline.list").json()
    assert listed["total"] == 3
    assert {row["PROCESS_ID"] for row in listed["result"]} == {
        first["process_id"],
        second["process_id"],
    }
    # Clearing one record by ID leaves the rest of the batch reserved.
    one = first["events"][0]["ID"]
    assert sim.ok("event.offline.clear", {"process_id": first["process_id"], "id": [one]}) is True
    left = sim.ok("event.offline.get", {"clear": 0, "process_id": first["process_id"]})
    assert [e["ID"] for e in left["events"]] == [first["events"][1]["ID"]]
    assert sim.ok("event.offline.clear", {"process_id": first["process_id"]}) is True
    assert sim.call("event.offline.list").json()["total"] == 1


def test_get_with_clear_deletes_and_returns_no_process_id(sim: Sim) -> None:
    bind_offline(sim)
    answer(sim, open_chat(sim))
    got = sim.ok("event.offline.get")
    assert got["process_id"] is None and len(got["events"]) == 1
    assert sim.ok("event.offline.get")["events"] == []
    assert error_of(sim.call("event.offline.get", {"limit": 0}), 400) == "ERROR_ARGUMENT"


def test_clear_and_error_refusals(sim: Sim) -> None:
    assert error_of(sim.call("event.offline.clear"), 400) == "ERROR_ARGUMENT"
    bad_ids = {"process_id": "p", "message_id": ["short"]}
    assert error_of(sim.call("event.offline.clear", bad_ids), 400) == "ERROR_ARGUMENT"
    assert error_of(sim.call("event.offline.clear", {"process_id": "p", "id": [0]}), 400) == (
        "ERROR_ARGUMENT"
    )
    assert error_of(sim.call("event.offline.error", {"process_id": "p"}), 400) == "ERROR_ARGUMENT"


def test_error_marks_a_record_and_takes_it_out_of_its_batch(sim: Sim) -> None:
    bind_offline(sim)
    chat_id = open_chat(sim)
    answer(sim, chat_id, "one")
    answer(sim, chat_id, "two")
    got = sim.ok("event.offline.get", {"clear": 0})
    bad = got["events"][0]["MESSAGE_ID"]
    marked = sim.ok("event.offline.error", {"process_id": got["process_id"], "message_id": [bad]})
    assert marked is True
    sim.ok("event.offline.clear", {"process_id": got["process_id"]})
    rows = sim.call("event.offline.list").json()["result"]
    assert [(r["MESSAGE_ID"], r["ERROR"], r["PROCESS_ID"]) for r in rows] == [(bad, "1", "")]
    assert sim.ok("event.offline.get", {"clear": 0})["events"] == []
    errors = sim.ok("event.offline.get", {"clear": 0, "error": 1})["events"]
    assert [e["MESSAGE_ID"] for e in errors] == [bad]


def test_identical_events_merge_into_one_unreserved_record(sim: Sim) -> None:
    bind_offline(sim)
    hub = sim.server.portal.events
    data = {"connector": CONNECTOR, "line": LINE}
    sim.ok("event.bind", {"event": "OnImConnectorStatusDelete", "event_type": "offline"})
    with sim.server.portal.lock:
        hub.raise_event("ONIMCONNECTORSTATUSDELETE", data, 1)
    sim.clock.advance(5)
    with sim.server.portal.lock:
        hub.raise_event("ONIMCONNECTORSTATUSDELETE", data, 1)
    rows = sim.call("event.offline.list").json()["result"]
    assert len(rows) == 1
    assert rows[0]["TIMESTAMP_X"].endswith("+00:00")
    reserved = sim.ok("event.offline.get", {"clear": 0})
    with sim.server.portal.lock:  # a reserved record is not merged into: a new one is added
        hub.raise_event("ONIMCONNECTORSTATUSDELETE", data, 1)
    assert sim.call("event.offline.list").json()["total"] == 2
    assert reserved["events"][0]["MESSAGE_ID"] == rows[0]["MESSAGE_ID"]


def test_list_pages_by_fifty_and_orders_and_filters(sim: Sim) -> None:
    bind_offline(sim)
    chat_id = open_chat(sim)
    for n in range(55):
        answer(sim, chat_id, f"answer {n}")
    first = sim.call("event.offline.list").json()
    assert (len(first["result"]), first["total"], first["next"]) == (50, 55, 50)
    rest = sim.call("event.offline.list", {"start": 50}).json()
    assert len(rest["result"]) == 5 and "next" not in rest
    reserved = sim.ok("event.offline.get", {"clear": 0, "limit": 1})["process_id"]
    newest_first = sim.call("event.offline.list", {"order": {"PROCESS_ID": "DESC"}}).json()
    assert newest_first["result"][0]["PROCESS_ID"] == reserved
    only = sim.call("event.offline.list", {"filter": {"!PROCESS_ID": ""}}).json()
    assert only["total"] == 1
    bad = sim.call("event.offline.list", {"filter": {"EVENT_DATA": "x"}})
    assert error_of(bad, 400) == "ERROR_ARGUMENT"


def test_operator_answer_without_a_waiting_chat_is_404(sim: Sim) -> None:
    response = sim.http.post("/_sim/operator-answer", json={"text": "anyone?"})
    assert response.status_code == 404
    open_chat(sim)
    assert answer(sim, None)["chat"] == {"id": "c1"}  # picks the chat that waits


# -- pushed events ---------------------------------------------------------------------------


class Receiver:
    """An event handler on loopback that records each POST and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append((self.headers["Content-Type"], self.rfile.read(length)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_online_handler_gets_a_form_post_with_the_application_token(sim: Sim) -> None:
    receiver = Receiver()
    try:
        sim.ok("event.bind", {"event": "OnImConnectorMessageAdd", "handler": receiver.url})
        chat_id = open_chat(sim)
        posted = answer(sim, chat_id)
        assert sim.server.portal.events.wait_delivered(1, 10)
        [(content_type, body)] = receiver.bodies
        assert content_type == "application/x-www-form-urlencoded"
        fields = dict(parse_qsl(body.decode()))
        assert fields["event"] == MESSAGE_ADD
        assert fields["data[MESSAGES][0][im][chat_id]"] == str(chat_id)
        assert fields["data[MESSAGES][0][im][message_id]"] == str(posted["im"]["message_id"])
        assert fields["data[MESSAGES][0][chat][id]"] == "c1"
        assert fields["ts"] == str(int(sim.clock()))
        token = sim.http.get("/_sim/events").json()["application_token"]
        assert fields["auth[application_token]"] == token
        assert fields["auth[member_id]"] == sim.server.config.member_id
        form = parse_form(body.decode())
        assert form["data"]["MESSAGES"][0]["message"]["text"] == "Hi, how can I help?"
    finally:
        receiver.close()


def test_a_failed_push_is_recorded_and_never_retried(sim: Sim) -> None:
    receiver = Receiver(status=503)
    try:
        sim.ok("event.bind", {"event": "OnImConnectorMessageAdd", "handler": receiver.url})
        chat_id = open_chat(sim)
        answer(sim, chat_id, "first")
        assert sim.server.portal.events.wait_delivered(1, 10)
        answer(sim, chat_id, "second")  # the queue goes on; the first is not sent again
        assert sim.server.portal.events.wait_delivered(2, 10)
        deliveries = sim.http.get("/_sim/events").json()["deliveries"]
        assert [(d["status"], d["error"]) for d in deliveries] == [(503, None), (503, None)]
        texts = [
            parse_form(body.decode())["data"]["MESSAGES"][0]["message"]["text"]
            for _, body in receiver.bodies
        ]
        assert texts == ["first", "second"]
    finally:
        receiver.close()


def test_reset_forgets_the_queue_and_keeps_the_bindings(sim: Sim) -> None:
    bind_offline(sim)
    answer(sim, open_chat(sim))
    assert sim.call("event.offline.list").json()["total"] == 1
    assert sim.http.post("/_sim/reset").status_code == 200
    assert sim.call("event.offline.list").json()["total"] == 0
    assert len(sim.ok("event.get")) == 1
