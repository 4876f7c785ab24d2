"""The simulator does what a real portal's server code does (issue 16 item 10): profiles
rewritten from the submitted user block, names refused only for new customers, ERRORS as
texts, updates that need text, renames of unknown users and closed sessions, `batch`
length and placeholders, domain moves."""

# ruff: noqa: RUF001 - Russian texts as the server ships them (Cyrillic on purpose)

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from simulator_fixtures import CONNECTOR, LINE, Sim, running_simulator

from consumer.simulator.cli import (
    STRICT_OPERATING_COST,
    STRICT_SESSION_IDLE,
    add_cli_arguments,
    build_config,
)

RENAME = "imconnector.chat.name.set"
UPDATE = "imconnector.update.messages"
DELETE = "imconnector.delete.messages"
NO_USER = "Cannot create or get user mapped to external messenger user."


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def element(msg_id: str, text: str | None = "hi", **user: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"id": msg_id}
    if text is not None:
        msg["text"] = text
    return {"user": {"id": "u1", **user}, "message": msg, "chat": {"id": "c1"}}


def call(sim: Sim, method: str, *elements: dict[str, Any]) -> list[dict[str, Any]]:
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": list(elements)}
    rows: list[dict[str, Any]] = sim.ok(method, params)["DATA"]["RESULT"]
    return rows


def profile(sim: Sim, user: str = "u1") -> dict[str, Any]:
    return dict(sim.state()["users"][f"{CONNECTOR}|{user}"]["profile"])


FULL = {
    "name": "Anna",
    "last_name": "Ivanova",
    "url": "https://example.com/anna",
    "gender": "female",
    "email": "anna@example.com",
}


def test_an_id_only_block_on_update_or_delete_rewrites_the_profile_like_the_server(
    sim: Sim,
) -> None:
    call(sim, "imconnector.send.messages", element("m1", **FULL))
    assert profile(sim) == {
        "NAME": "Anna",
        "LAST_NAME": "Ivanova",
        "PERSONAL_WWW": "https://example.com/anna",
        "PERSONAL_GENDER": "F",
        "EMAIL": "anna@example.com",
    }
    call(sim, "imconnector.send.messages", element("m2", **FULL))  # same block: same hash
    assert sim.state()["profiles"] == {"updates": 0, "guest_overwrites": 0}
    rows = call(sim, DELETE, element("m1", text=None))  # `user: {"id"}` only
    assert rows[0]["SUCCESS"] is True
    # preparationUserFields: no names -> "Guest"; absent last name, url, gender -> blank;
    # an absent email is left as it was.
    assert profile(sim) == {
        "NAME": "Guest",
        "LAST_NAME": "",
        "PERSONAL_WWW": "",
        "PERSONAL_GENDER": "",
        "EMAIL": "anna@example.com",
    }
    assert sim.state()["profiles"] == {"updates": 1, "guest_overwrites": 1}


def test_a_partial_block_blanks_what_it_lacks(sim: Sim) -> None:
    call(sim, "imconnector.send.messages", element("m1", **FULL))
    call(sim, UPDATE, element("m1", "edited", name="Anna"))
    assert profile(sim)["NAME"] == "Anna"
    assert profile(sim)["LAST_NAME"] == "" and profile(sim)["PERSONAL_WWW"] == ""
    assert sim.state()["profiles"] == {"updates": 1, "guest_overwrites": 0}


@pytest.mark.parametrize("bad", [{"name": "R2-D2"}, {"last_name": "X" * 26}, {"name": "Ann 😀"}])
def test_a_name_the_docs_forbid_fails_only_a_new_customer(sim: Sim, bad: dict[str, str]) -> None:
    rows = call(sim, "imconnector.send.messages", element("m1", **bad))
    assert (rows[0]["SUCCESS"], rows[0]["ERRORS"]) == (False, [NO_USER])
    call(sim, "imconnector.send.messages", element("m2", **FULL))
    # An existing customer: the refused profile update is swallowed, the message goes in.
    rows = call(sim, "imconnector.send.messages", element("m3", **bad))
    assert rows[0]["SUCCESS"] is True
    assert profile(sim)["NAME"] == "Anna"
    (chat,) = sim.state()["chats"].values()
    assert [m["external_id"] for m in chat["messages"]] == ["m2", "m3"]


def test_a_two_word_name_is_split_before_the_length_rule(sim: Sim) -> None:
    long_pair = f"{'A' * 20} {'B' * 20}"  # 41 characters, two names of 20
    rows = call(sim, "imconnector.send.messages", element("m1", name=long_pair))
    assert rows[0]["SUCCESS"] is True
    assert (profile(sim)["NAME"], profile(sim)["LAST_NAME"]) == ("A" * 20, "B" * 20)
    rows = call(
        sim,
        "imconnector.send.messages",
        {**element("m2"), "user": {"id": "u3", "name": "Jean Paul Sartre"}},
    )
    assert rows[0]["SUCCESS"] is True
    assert profile(sim, "u3")["NAME"] == "Jean Paul Sartre"  # three words: not split


def test_an_email_cuser_refuses_fails_a_new_customer_with_its_text() -> None:
    with running_simulator(language="ru") as sim:
        rows = call(sim, "imconnector.send.messages", element("m1", email="not-an-email"))
        assert rows[0]["SUCCESS"] is False
        assert rows[0]["ERRORS"] == [
            "Неверный email.<br>",
            "Не удалось создать или получить пользователя системы, сопоставленного с "
            "пользователем удаленного мессенджера",
        ]
        rows = call(sim, "imconnector.send.messages", element("m2", text=None))
        assert rows[0]["ERRORS"] == ["Переданы не все необходимые данные"]


def test_an_update_needs_text_or_files_and_the_text_0_is_text(sim: Sim) -> None:
    assert call(sim, "imconnector.send.messages", element("m1", "0"))[0]["SUCCESS"] is True
    rows = call(sim, UPDATE, element("m1", text=None), element("m1", "0"))
    assert [(r["SUCCESS"], r.get("ERRORS")) for r in rows] == [
        (False, ["Incomplete data"]),
        (True, None),
    ]
    files = element("m1", text=None)
    files["message"]["files"] = [{"url": "https://files.example/a.png"}]
    assert call(sim, UPDATE, files)[0]["SUCCESS"] is True
    (chat,) = sim.state()["chats"].values()
    assert chat["messages"][0]["text"] == "0"  # files change nothing on an update


def rename(sim: Sim, name: str, user: str = "u1") -> httpx.Response:
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": "c1", "USER_ID": user, "NAME": name}
    return sim.call(RENAME, params)


def names(sim: Sim) -> list[str]:
    return [chat["name"] for chat in sim.state()["chats"].values()]


def test_an_unknown_user_id_renames_nothing_and_answers_success(sim: Sim) -> None:
    call(sim, "imconnector.send.messages", element("m1", **FULL))
    response = rename(sim, "VIP", user="nobody")
    assert response.status_code == 200
    assert response.json()["result"] == {"SUCCESS": True, "DATA": {"RESULT": {}}}
    assert names(sim) == ["Anna Ivanova"]


def test_a_session_closed_after_the_idle_time_refuses_renames_until_the_next_message() -> None:
    with running_simulator(session_idle_close_s=600) as sim:
        first = call(sim, "imconnector.send.messages", element("m1", **FULL))[0]["session"]
        assert rename(sim, "Before").status_code == 200
        sim.clock.advance(601)
        response = rename(sim, "After close")
        assert response.status_code == 400
        assert response.json()["error"] == "CHAT_RENAMING_FAILED"
        (chat,) = sim.state()["chats"].values()
        assert chat["session_open"] is False and chat["name"] == "Before"
        second = call(sim, "imconnector.send.messages", element("m2", **FULL))[0]["session"]
        assert second["CHAT_ID"] == first["CHAT_ID"] and second["ID"] != first["ID"]
        assert rename(sim, "Reopened").status_code == 200
        assert names(sim) == ["Reopened"]


def command(method: str, **params: Any) -> str:
    return f"{method}?{urlencode(params, quote_via=quote)}"


def rename_command(name: str) -> str:
    return command(RENAME, CONNECTOR=CONNECTOR, LINE=LINE, CHAT_ID="c1", USER_ID="u1", NAME=name)


def test_batch_substitutes_placeholders_inside_values(sim: Sim) -> None:
    call(sim, "imconnector.send.messages", element("m1", **FULL))
    status = command("imconnector.status", CONNECTOR=CONNECTOR, LINE=LINE)
    cmd = {"s": status, "r": rename_command("Sale $time[s][date_start] now")}
    body = sim.ok("batch", {"halt": 0, "cmd": cmd})
    started = body["result_time"]["s"]["date_start"]
    assert names(sim) == [f"Sale {started} now"]
    cmd = {"s": status, "r": rename_command("$RESULT[s][LINE] upper case finds nothing")}
    sim.ok("batch", {"halt": 0, "cmd": cmd})
    assert names(sim) == ["$RESULT[s][LINE] upper case finds nothing"]
    cmd = {"s": status, "r": rename_command("line $result[s][LINE], id $result[s][CONNECTOR]")}
    sim.ok("batch", {"halt": 0, "cmd": cmd})
    # The placeholder runs to the next space, so the comma after it is replaced too.
    assert names(sim) == [f"line {LINE} id {CONNECTOR}"]


def test_a_moved_portal_answers_a_redirect_to_its_new_address(sim: Sim) -> None:
    moved = sim.http.post("/_sim/move", json={"to": f"{sim.server.url}/new", "status": 301})
    assert moved.json() == {"to": f"{sim.server.url}/new", "status": 301}
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE}
    old = sim.call("imconnector.status", params)
    assert old.status_code == 301
    assert old.headers["Location"] == f"{sim.server.url}/new/rest/imconnector.status"
    assert "json" not in old.headers["Content-Type"]
    new = sim.http.post("/new/rest/imconnector.status", json={"auth": sim.token, **params})
    assert new.status_code == 200 and new.json()["result"]["STATUS"] is True
    tokens = sim.http.post("/_sim/tokens").json()
    assert tokens["client_endpoint"] == f"{sim.server.url}/new/rest/"
    assert [(c["method"], c["http_status"], c["applied"]) for c in sim.calls()] == [
        ("imconnector.status", 301, False),
        ("imconnector.status", 200, True),
    ]
    sim.http.post("/_sim/move", json={"to": None})
    assert sim.call("imconnector.status", params).status_code == 200


def test_the_command_line_reaches_strict_mode_and_after_phase_faults() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    strict = build_config(parser.parse_args(["--strict"]))
    assert strict.preset_lines == []
    assert strict.operating_cost_per_element == STRICT_OPERATING_COST
    assert strict.session_idle_close_s == STRICT_SESSION_IDLE
    with pytest.raises(ValueError, match="no lines"):
        build_config(parser.parse_args(["--strict", "--line", "demo:1"]))
    after = build_config(
        parser.parse_args(
            [
                "--error-rate",
                "1",
                "--fault-phase",
                "after",
                "--fault-methods",
                "imconnector.send.messages",
            ]
        )
    )
    faults = after.fault_settings()
    assert (faults.error_rate, faults.fault_phase, faults.methods) == (
        1.0,
        "after",
        ["imconnector.send.messages"],
    )
