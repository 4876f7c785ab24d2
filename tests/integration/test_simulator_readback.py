"""The simulator's read-back methods (`imopenlines.session.history.get`, `imopenlines.dialog.get`)
and the send behaviour they expose: the external id stored in a second step, in the form
the portal keeps it, deleted messages losing it, sessions, access rules, and a request
applied after its client gave up (reference `bitrix24-readback.md`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from simulator_fixtures import CONNECTOR, LINE, Sim, message, running_simulator

from tests.integration.harness import wait_until

HISTORY = "imopenlines.session.history.get"
DIALOG = "imopenlines.dialog.get"


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def sent(sim: Sim, *elements: dict[str, Any]) -> list[dict[str, Any]]:
    response = sim.send(*elements)
    assert response.status_code == 200, response.text
    return list(response.json()["result"]["DATA"]["RESULT"])


def history(sim: Sim, session_id: Any) -> dict[str, Any]:
    return dict(sim.ok(HISTORY, {"SESSION_ID": session_id}))


def mids(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(senderid, connectorMid) of every message of a history answer, oldest first."""
    out = []
    for _, item in sorted(result["message"].items(), key=lambda kv: int(kv[0])):
        params = item["params"]
        out.append((item["senderid"], params.get("connectorMid", []) if params else []))
    return out


def test_history_returns_each_message_with_its_external_id_and_author(sim: Sim) -> None:
    first, second = sent(sim, message("m1"), message("m2", text="again"))
    session_id, chat_id = first["session"]["ID"], first["session"]["CHAT_ID"]
    assert second["session"] == first["session"]
    result = history(sim, session_id)
    user = first["user"]
    assert mids(result) == [(user, ["m1"]), (user, ["m2"])]
    assert (result["chatId"], result["sessionId"]) == (int(chat_id), int(session_id))
    chat = result["chat"][chat_id]
    assert chat["entityId"] == f"{CONNECTOR}|{LINE}|c1|{user}"
    assert chat["entityData1"].split("|")[5] == session_id  # the session is open
    assert result["users"][user]["connector"] is True


def test_operator_messages_carry_ids_too_under_the_operators_author(sim: Sim) -> None:
    (first,) = sent(sim, message("m1"))
    chat_id = int(first["session"]["CHAT_ID"])
    posted = sim.server.portal.operator_answer(chat_id, "hello from support", author_id=7)
    assert posted is not None
    status = sim.call(
        "imconnector.send.status.delivery",
        {
            "CONNECTOR": CONNECTOR,
            "LINE": LINE,
            "MESSAGES": [
                {
                    "im": posted["im"],
                    "message": {"id": ["ext-out-1"]},
                    "chat": {"id": "c1"},
                }
            ],
        },
    )
    assert status.status_code == 200
    assert mids(history(sim, first["session"]["ID"])) == [
        (first["user"], ["m1"]),
        ("7", ["ext-out-1"]),
    ]


@pytest.mark.parametrize(
    ("sent_id", "stored"),
    [
        ("  padded\t", ["padded"]),
        ("x" * 100, ["x" * 100]),
        ("y" * 150, ["y" * 97 + "..."]),
        ("0", []),
    ],
)
def test_the_external_id_is_kept_in_the_form_the_portal_stores(
    sim: Sim, sent_id: str, stored: list[str]
) -> None:
    (first,) = sent(sim, message(sent_id))
    assert mids(history(sim, first["session"]["ID"])) == [(first["user"], stored)]


def test_a_request_that_dies_between_the_two_writes_leaves_a_message_without_its_id() -> None:
    with running_simulator(split_write_rate=1.0) as sim:
        response = sim.send(message("m1"), message("m2"))
        assert response.status_code == 500
        (chat,) = sim.state()["chats"].values()
        assert [(m["text"], m["external_ids"]) for m in chat["messages"]] == [("hello", [])]
        (record,) = sim.calls(method="imconnector.send.messages")
        assert (record["http_status"], record["applied"]) == (500, True)
        result = history(sim, chat["session_id"])
        assert mids(result) == [(chat["user_id"], [])]


def test_a_deleted_message_loses_its_id(sim: Sim) -> None:
    first, _ = sent(sim, message("m1"), message("m2"))
    deleted = sim.call(
        "imconnector.delete.messages",
        {"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": [message("m1", text=None)]},
    )
    assert deleted.status_code == 200
    result = history(sim, first["session"]["ID"])
    assert mids(result) == [(first["user"], []), (first["user"], ["m2"])]
    oldest = min(result["message"], key=int)
    assert result["message"][oldest]["params"] == {"isDeleted": "Y"}


def test_a_closed_session_keeps_its_messages_and_the_chat_moves_to_a_new_one() -> None:
    with running_simulator(session_idle_close_s=600) as sim:
        (first,) = sent(sim, message("m1"))
        old = first["session"]["ID"]
        sim.clock.advance(601)
        closed = history(sim, old)
        assert closed["chat"][first["session"]["CHAT_ID"]]["entityData1"].split("|")[5] == "0"
        user_code = f"{CONNECTOR}|{LINE}|c1|{first['user']}"
        assert sim.ok(DIALOG, {"USER_CODE": user_code})["entity_data_1"].split("|")[5] == "0"
        (second,) = sent(sim, message("m2"))
        new = second["session"]["ID"]
        assert int(new) > int(old) and second["session"]["CHAT_ID"] == first["session"]["CHAT_ID"]
        assert mids(history(sim, old)) == [(first["user"], ["m1"])]
        assert mids(history(sim, new)) == [(first["user"], ["m2"])]
        dialog = sim.ok(DIALOG, {"USER_CODE": "imol|" + user_code})
        assert (dialog["id"], dialog["entity_id"]) == (int(second["session"]["CHAT_ID"]), user_code)
        assert dialog["entity_data_1"].split("|")[5] == new


def test_history_by_chat_id_reads_the_latest_session(sim: Sim) -> None:
    (first,) = sent(sim, message("m1"))
    result = sim.ok(HISTORY, {"CHAT_ID": first["session"]["CHAT_ID"]})
    assert result["sessionId"] == int(first["session"]["ID"])


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        (HISTORY, {}, "MISSING_REQUIRED_PARAM"),
        (HISTORY, {"SESSION_ID": 99_999}, "INVALID_SESSION_ID"),
        (DIALOG, {"USER_CODE": f"{CONNECTOR}|{LINE}|nobody|1"}, "ACCESS_ERROR"),
    ],
)
def test_reads_of_what_does_not_exist_are_refused(
    sim: Sim, method: str, params: dict[str, Any], code: str
) -> None:
    response = sim.call(method, params)
    assert (response.status_code, response.json()["error"]) == (400, code)


def test_a_user_without_open_lines_rights_is_refused_both_reads() -> None:
    with running_simulator(openlines_access="none") as sim:
        (first,) = sent(sim, message("m1"))
        denied = sim.call(HISTORY, {"SESSION_ID": first["session"]["ID"]})
        assert (denied.status_code, denied.json()["error"]) == (400, "ACCESS_DENIED")
        user_code = f"{CONNECTOR}|{LINE}|c1|{first['user']}"
        refused = sim.call(DIALOG, {"USER_CODE": user_code})
        assert (refused.status_code, refused.json()["error"]) == (400, "ACCESS_ERROR")


def test_an_operator_reads_only_the_sessions_they_answered() -> None:
    with running_simulator(openlines_access="operator") as sim:
        (first,) = sent(sim, message("m1"))
        session = first["session"]
        queued = sim.call(HISTORY, {"SESSION_ID": session["ID"]})
        assert queued.json()["error"] == "ACCESS_DENIED"
        # The token's user (the portal's user 1) answers the chat: the session is theirs.
        sim.server.portal.operator_answer(int(session["CHAT_ID"]), "hi", author_id=1)
        assert history(sim, session["ID"])["sessionId"] == int(session["ID"])


def test_access_and_the_methods_themselves_are_switched_at_runtime(sim: Sim) -> None:
    (first,) = sent(sim, message("m1"))
    limits = sim.http.post("/_sim/limits", json={"openlines_access": "none"}).json()
    assert limits["openlines_access"] == "none"
    assert sim.call(HISTORY, {"SESSION_ID": first["session"]["ID"]}).status_code == 400
    sim.http.post("/_sim/limits", json={"openlines_access": "all", "readback_methods": False})
    missing = sim.call(HISTORY, {"SESSION_ID": first["session"]["ID"]})
    assert (missing.status_code, missing.json()["error"]) == (404, "ERROR_METHOD_NOT_FOUND")
    bad = sim.http.post("/_sim/limits", json={"openlines_access": "some"})
    assert bad.status_code == 400


def test_many_chats_are_read_back_in_one_batch(sim: Sim) -> None:
    results = sent(sim, *(message(f"m{i}", chat=f"c{i}", user=f"u{i}") for i in range(3)))
    cmd = {
        f"c{i}": f"{HISTORY}?{urlencode({'SESSION_ID': r['session']['ID']}, quote_via=quote)}"
        for i, r in enumerate(results)
    }
    answer = sim.call("batch", {"halt": 0, "cmd": cmd})
    assert answer.status_code == 200
    per_key = answer.json()["result"]["result"]
    assert [mids(per_key[f"c{i}"]) for i in range(3)] == [
        [(r["user"], [f"m{i}"])] for i, r in enumerate(results)
    ]


def test_a_request_is_applied_after_its_client_gave_up() -> None:
    # The portal does not stop when the client goes away: PHP runs the request to its end
    # (reference `bitrix24-readback.md` §5 caveat 1). The simulator's latency comes first.
    with running_simulator(latency_ms=1500) as sim:
        with pytest.raises(httpx.ReadTimeout):
            sim.send(message("m1"), timeout=0.2)
        wait_until(lambda: sim.state()["chats"], 10, "the send applied after the timeout")
        (chat,) = sim.state()["chats"].values()
        assert [m["external_ids"] for m in chat["messages"]] == [["m1"]]
