"""The simulator's imconnector.* methods: parameter checks, envelopes and state (reference §3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from simulator_fixtures import (
    CONNECTOR,
    LINE,
    TIME_KEYS,
    Sim,
    message,
    running_simulator,
)

ICON = {"DATA_IMAGE": "data:image/svg+xml,%3Csvg%3E%3C/svg%3E", "COLOR": "#69acc0"}


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def register_params(**overrides: Any) -> dict[str, Any]:
    params = {
        "ID": "MyChannel",
        "NAME": "My channel",
        "ICON": ICON,
        "PLACEMENT_HANDLER": "https://app.example/settings",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert set(body) == {"error", "error_description"}
    assert body["error"] == code
    assert isinstance(body["error_description"], str) and body["error_description"]
    return body


# -- envelopes ---------------------------------------------------------------------------


def test_success_envelope_has_result_and_time(sim: Sim) -> None:
    response = sim.call("imconnector.status", {"CONNECTOR": CONNECTOR, "LINE": LINE})
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"result", "time"}
    assert set(body["time"]) == TIME_KEYS
    assert body["time"]["start"] == sim.clock()
    assert body["time"]["date_start"].endswith("+00:00")
    assert body["time"]["operating_reset_at"] == int(sim.clock() + 600)


def test_json_suffix_and_form_encoding_and_query_auth_are_accepted(sim: Sim) -> None:
    by_json = sim.http.post(
        "/rest/imconnector.status.json", json={"auth": sim.token, "connector": "DEMO", "line": 1}
    )
    by_form = sim.http.post(
        f"/rest/imconnector.status?auth={sim.token}", data={"CONNECTOR": "demo", "LINE": "1"}
    )
    by_bearer = sim.http.post(
        "/rest/imconnector.status",
        json={"CONNECTOR": "demo", "LINE": 1},
        headers={"Authorization": f"Bearer {sim.token}"},
    )
    for response in (by_json, by_form, by_bearer):
        assert response.status_code == 200, response.text
        assert response.json()["result"]["STATUS"] is True


def test_form_encoded_nested_messages_create_a_message(sim: Sim) -> None:
    body = (
        f"auth={sim.token}&CONNECTOR=demo&LINE=1"
        "&MESSAGES[0][user][id]=u9&MESSAGES[0][message][id]=m9"
        "&MESSAGES[0][message][text]=via%20form&MESSAGES[0][chat][id]=c9"
    )
    response = sim.http.post(
        "/rest/imconnector.send.messages",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["DATA"]["RESULT"][0]["SUCCESS"] is True
    (chat,) = sim.state()["chats"].values()
    assert chat["messages"][0]["text"] == "via form"


def test_unknown_method_is_404_error_method_not_found(sim: Sim) -> None:
    assert_error(sim.call("imconnector.no.such.method"), 404, "ERROR_METHOD_NOT_FOUND")


def test_webhook_style_call_is_refused_with_wrong_auth_type(sim: Sim) -> None:
    response = sim.http.post(
        "/rest/1/abcdef123/imconnector.send.messages.json",
        json={"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": [message()]},
    )
    assert_error(response, 403, "WRONG_AUTH_TYPE")
    assert sim.state()["chats"] == {}


# -- register / unregister / list ----------------------------------------------------------


def test_register_succeeds_inside_result_and_lowercases_the_id(sim: Sim) -> None:
    response = sim.call("imconnector.register", register_params(CHAT_GROUP=True))
    assert response.status_code == 200
    assert response.json()["result"] == {"result": True}
    connector = sim.state()["connectors"]["mychannel"]
    assert connector["chat_group"] is True
    assert sim.ok("imconnector.list")["mychannel"] == "My channel"


def test_register_flags_only_honour_real_booleans(sim: Sim) -> None:
    sim.ok("imconnector.register", register_params(CHAT_GROUP="true", NEWSLETTER=False))
    flags = sim.state()["connectors"]["mychannel"]["flags"]
    assert flags["CHAT_GROUP"] is False  # the string "true" falls back to the default
    assert flags["NEWSLETTER"] is False


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"ID": None}, "CONNECTOR_ID_REQUIRED"),
        ({"ID": 42}, "CONNECTOR_ID_REQUIRED"),
        ({"ID": "my.channel"}, "APPLICATION_REGISTRATION_ERROR_POINT"),
        ({"NAME": ""}, "NAME_REQUIRED"),
        ({"ICON": {"COLOR": "#fff"}}, "ICON_REQUIRED"),
        ({"PLACEMENT_HANDLER": None}, "NO_PLACEMENT_HANDLER"),
    ],
)
def test_register_failures_are_http_200_inside_result(
    sim: Sim, overrides: dict[str, Any], code: str
) -> None:
    response = sim.call("imconnector.register", register_params(**overrides))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"result", "time"}
    assert body["result"]["result"] is False
    assert body["result"]["error"] == code
    assert body["result"]["error_description"]
    assert "mychannel" not in sim.state()["connectors"]
    (call,) = sim.calls(method="imconnector.register")
    assert call["error"] == code and call["applied"] is False


def test_unregister_removes_connector_and_its_lines(sim: Sim) -> None:
    assert sim.ok("imconnector.unregister", {"ID": "DEMO"}) == {"result": True}
    state = sim.state()
    assert "demo" not in state["connectors"]
    assert state["lines"] == []
    again = sim.call("imconnector.unregister", {"ID": "demo"})
    assert again.status_code == 200
    assert again.json()["result"]["error"] == "APPLICATION_UNREGISTRATION_ERROR"


def test_list_shows_built_in_and_custom_connectors(sim: Sim) -> None:
    listed = sim.ok("imconnector.list")
    assert listed["demo"] == "demo"
    assert "livechat" in listed


# -- activate / status / data / set.error ----------------------------------------------------


@pytest.mark.parametrize(
    ("active", "expected"),
    [
        (1, True),
        ("1", True),
        ("Y", True),
        ("N", True),  # non-empty string: activates, as the reference warns
        (True, True),
        (0, False),
        ("0", False),
        (False, False),
        ("", False),
    ],
)
def test_activate_follows_php_non_empty_rule(sim: Sim, active: Any, expected: bool) -> None:
    sim.ok("imconnector.register", register_params())
    assert sim.ok("imconnector.activate", {"CONNECTOR": "mychannel", "LINE": 7, "ACTIVE": 1})
    assert sim.ok("imconnector.activate", {"CONNECTOR": "mychannel", "LINE": 7, "ACTIVE": active})
    status = sim.ok("imconnector.status", {"CONNECTOR": "mychannel", "LINE": 7})
    assert status["STATUS"] is expected
    assert status["CONFIGURED"] is expected


@pytest.mark.parametrize("missing", ["CONNECTOR", "LINE", "ACTIVE"])
def test_activate_requires_its_arguments(sim: Sim, missing: str) -> None:
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "ACTIVE": 1}
    del params[missing]
    body = assert_error(sim.call("imconnector.activate", params), 400, "ERROR_ARGUMENT")
    assert missing in body["error_description"]


def test_status_line_defaults_to_zero_and_reports_flags(sim: Sim) -> None:
    default = sim.ok("imconnector.status", {"CONNECTOR": CONNECTOR})
    assert default == {
        "LINE": 0,
        "CONNECTOR": CONNECTOR,
        "ERROR": False,
        "CONFIGURED": False,
        "STATUS": False,
    }
    assert sim.ok("imconnector.status", {"CONNECTOR": CONNECTOR, "LINE": LINE})["STATUS"] is True
    assert_error(sim.call("imconnector.status", {"LINE": 1}), 400, "ERROR_ARGUMENT")


def test_set_error_flags_the_line(sim: Sim) -> None:
    assert sim.ok("imconnector.set.error", {"CONNECTOR": CONNECTOR, "LINE": LINE})["SUCCESS"]
    status = sim.ok("imconnector.status", {"CONNECTOR": CONNECTOR, "LINE": LINE})
    assert status["ERROR"] is True
    assert status["CONFIGURED"] is True
    assert status["STATUS"] is False


def test_connector_data_set_merges_non_empty_keys(sim: Sim) -> None:
    base = {"CONNECTOR": CONNECTOR, "LINE": LINE}
    assert sim.ok("imconnector.connector.data.set", {**base, "DATA": {"id": "ch1", "NAME": "A"}})
    sim.ok("imconnector.connector.data.set", {**base, "DATA": {"NAME": "B", "URL": ""}})
    assert sim.state()["connector_data"]["demo|1"] == {"ID": "ch1", "NAME": "B"}
    assert_error(sim.call("imconnector.connector.data.set", base), 400, "ERROR_ARGUMENT")


# -- send.messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"LINE": LINE, "MESSAGES": [message()]}, "CONNECTOR"),
        ({"CONNECTOR": CONNECTOR, "MESSAGES": [message()]}, "LINE"),
        ({"CONNECTOR": CONNECTOR, "LINE": LINE}, "MESSAGES"),
        ({"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": "oops"}, "array of messages"),
        ({"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": ["oops"]}, "array of messages"),
        (
            {"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": [{"user": {"id": "1"}}]},
            "incorrect structure",
        ),
    ],
)
def test_send_argument_errors_are_400(sim: Sim, params: dict[str, Any], needle: str) -> None:
    body = assert_error(sim.call("imconnector.send.messages", params), 400, "ERROR_ARGUMENT")
    assert needle in body["error_description"]
    assert sim.state()["chats"] == {}


def test_send_to_inactive_line_is_not_active_line(sim: Sim) -> None:
    assert_error(sim.send(message(), line=99), 400, "NOT_ACTIVE_LINE")
    sim.ok("imconnector.activate", {"CONNECTOR": CONNECTOR, "LINE": LINE, "ACTIVE": 0})
    assert_error(sim.send(message()), 400, "NOT_ACTIVE_LINE")
    assert sim.state()["chats"] == {}


def test_send_via_activated_but_unregistered_connector_is_refused(sim: Sim) -> None:
    sim.ok("imconnector.activate", {"CONNECTOR": "ghost", "LINE": 3, "ACTIVE": 1})
    response = sim.call(
        "imconnector.send.messages", {"CONNECTOR": "ghost", "LINE": 3, "MESSAGES": [message()]}
    )
    assert_error(response, 400, "IMCONNECTOR_NOT_SPECIFIED_CORRECT_CONNECTOR")


def test_first_message_creates_session_and_technical_user(sim: Sim) -> None:
    response = sim.send(message("m1", name="Anna-Maria O'Neil"))
    result = response.json()["result"]
    assert result["SUCCESS"] is True
    (element,) = result["DATA"]["RESULT"]
    assert element["SUCCESS"] is True
    assert isinstance(element["user"], str) and element["user"].isdigit()
    session = element["session"]
    assert set(session) == {"ID", "CHAT_ID"}
    assert all(isinstance(v, str) for v in session.values())
    assert element["message"]["date"] == {}  # a PHP DateTime echoes as an empty object
    second = sim.send(message("m2")).json()["result"]["DATA"]["RESULT"][0]
    assert second["session"] == session
    assert second["user"] == element["user"]
    key = f"demo|1|c1|{element['user']}"
    chat = sim.state()["chats"][key]
    assert chat["session_id"] == session["ID"] and chat["chat_id"] == session["CHAT_ID"]
    assert [m["external_id"] for m in chat["messages"]] == ["m1", "m2"]
    other = sim.send(message("m3", user="u2")).json()["result"]["DATA"]["RESULT"][0]
    assert other["session"]["ID"] != session["ID"]
    assert other["user"] != element["user"]


def test_group_mode_keys_the_chat_by_chat_id_only() -> None:
    with running_simulator(chat_group=True) as sim:
        first = sim.send(message("m1", user="u1")).json()["result"]["DATA"]["RESULT"][0]
        second = sim.send(message("m2", user="u2")).json()["result"]["DATA"]["RESULT"][0]
        assert first["session"] == second["session"]
        assert first["user"] != second["user"]
        assert list(sim.state()["chats"]) == ["demo|1|c1|0"]


def test_repeated_send_creates_a_duplicate_message(sim: Sim) -> None:
    sim.send(message("m1", "same"))
    sim.send(message("m1", "same"))
    (chat,) = sim.state()["chats"].values()
    assert [(m["external_id"], m["text"]) for m in chat["messages"]] == [
        ("m1", "same"),
        ("m1", "same"),
    ]
    assert len({m["im_id"] for m in chat["messages"]}) == 2


@pytest.mark.parametrize(
    ("element", "errors"),
    [
        # ERRORS are the portal's texts, not codes (docs: "array of error texts").
        (message(name="R2-D2"), ["Cannot create or get user mapped to external messenger user."]),
        (message(name="A" * 26), ["Cannot create or get user mapped to external messenger user."]),
        (message(user=""), ["Failed to get IM user ID."]),
        (message(text=None), ["Incomplete data"]),
        (message(text=""), ["Incomplete data"]),
    ],
)
def test_per_element_failure_does_not_fail_the_call(
    sim: Sim, element: dict[str, Any], errors: list[str]
) -> None:
    response = sim.send(message("ok-1", user="good"), element, message("ok-2", user="good"))
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["SUCCESS"] is True  # per-element failures never flip the top level
    first, failed, last = result["DATA"]["RESULT"]
    assert first["SUCCESS"] is True and last["SUCCESS"] is True
    assert failed["SUCCESS"] is False
    assert failed["ERRORS"] == errors
    assert "session" not in failed
    (chat,) = sim.state()["chats"].values()
    assert [m["external_id"] for m in chat["messages"]] == ["ok-1", "ok-2"]


def test_unicode_names_and_files_only_messages_are_accepted(sim: Sim) -> None:
    element = message("f1", text=None, name="Мария Иванова")
    element["message"]["files"] = [{"url": "https://files.example/a.png", "name": "a.png"}]
    result = sim.send(element).json()["result"]["DATA"]["RESULT"][0]
    assert result["SUCCESS"] is True
    user = sim.state()["users"]["demo|u1"]
    assert (user["name"], user["last_name"]) == ("Мария", "Иванова")


def test_message_keys_are_lowercased_and_extra_flags_echoed(sim: Sim) -> None:
    element = {
        "USER": {"ID": "u1", "Skip_Phone_Validate": "Y"},
        "Message": {"ID": "m1", "TEXT": "hi", "DISABLE_CRM": "Y"},
        "CHAT": {"ID": "c1", "URL": "https://t.me/c1"},
    }
    result = sim.send(element).json()["result"]["DATA"]["RESULT"][0]
    assert result["SUCCESS"] is True
    assert result["extra"] == {"skip_phone_validate": "Y", "disable_tracker": "Y"}
    assert result["chat"] == {
        "id": "c1",
        "description": "Link to the original post: https://t.me/c1",
    }


# -- update / delete -------------------------------------------------------------------------


def test_update_replaces_text_of_every_copy_and_ignores_unknown_ids(sim: Sim) -> None:
    sim.send(message("m1", "v1"))
    sim.send(message("m1", "v1"))
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE}
    result = sim.ok(
        "imconnector.update.messages",
        {**params, "MESSAGES": [message("m1", "v2"), message("nope", "x")]},
    )
    assert [e["SUCCESS"] for e in result["DATA"]["RESULT"]] == [True, True]
    assert all("session" not in e for e in result["DATA"]["RESULT"])
    (chat,) = sim.state()["chats"].values()
    assert [m["text"] for m in chat["messages"]] == ["v2", "v2"]


def test_update_and_delete_share_the_argument_checks(sim: Sim) -> None:
    for method in ("imconnector.update.messages", "imconnector.delete.messages"):
        assert_error(
            sim.call(method, {"CONNECTOR": CONNECTOR, "LINE": LINE}), 400, "ERROR_ARGUMENT"
        )
        response = sim.call(method, {"CONNECTOR": CONNECTOR, "LINE": 5, "MESSAGES": [message()]})
        assert_error(response, 400, "NOT_ACTIVE_LINE")


def test_delete_marks_all_matching_messages_deleted(sim: Sim) -> None:
    sim.send(message("m1", "a"))
    sim.send(message("m1", "a"))
    sim.send(message("m2", "b"))
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE}
    gone = {"user": {"id": "u1"}, "message": {"id": "m1"}, "chat": {"id": "c1"}}
    unknown = {"user": {"id": "u1"}, "message": {"id": "zzz"}, "chat": {"id": "c1"}}
    result = sim.ok("imconnector.delete.messages", {**params, "MESSAGES": [gone, unknown]})
    assert [e["SUCCESS"] for e in result["DATA"]["RESULT"]] == [True, True]
    assert result["DATA"]["RESULT"][0]["message"] == {"id": "m1"}
    (chat,) = sim.state()["chats"].values()
    assert [(m["external_id"], m["deleted"]) for m in chat["messages"]] == [
        ("m1", True),
        ("m1", True),
        ("m2", False),
    ]


# -- chat.name.set -------------------------------------------------------------------------


def test_chat_rename_needs_an_open_dialog_of_a_known_customer(sim: Sim) -> None:
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": "c1", "USER_ID": "u1", "NAME": "VIP"}
    # An unknown USER_ID: the portal answers SUCCESS and renames nothing
    # (`imopenlines connector.php::onNewChatName` returns false, the REST layer skips it).
    assert sim.ok("imconnector.chat.name.set", params) == {"SUCCESS": True, "DATA": {"RESULT": {}}}
    assert sim.state()["chats"] == {}
    sim.send(message(chat="other"))  # u1 now exists, but has no dialog in c1
    assert_error(sim.call("imconnector.chat.name.set", params), 400, "CHAT_RENAMING_FAILED")
    sim.send(message())
    result = sim.ok("imconnector.chat.name.set", params)
    assert result == {"SUCCESS": True, "DATA": {"RESULT": {}}}
    names = {c["external_chat_id"]: c["name"] for c in sim.state()["chats"].values()}
    assert names["c1"] == "VIP"


@pytest.mark.parametrize("missing", ["NAME", "CHAT_ID", "USER_ID", "CONNECTOR", "LINE"])
def test_chat_rename_requires_its_arguments(sim: Sim, missing: str) -> None:
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": "c1", "USER_ID": "u1", "NAME": "X"}
    del params[missing]
    body = assert_error(sim.call("imconnector.chat.name.set", params), 400, "ERROR_ARGUMENT")
    assert missing in body["error_description"]


def test_chat_rename_in_group_mode_needs_no_user() -> None:
    with running_simulator(chat_group=True) as sim:
        sim.send(message())
        params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "CHAT_ID": "c1", "NAME": "Group"}
        assert sim.ok("imconnector.chat.name.set", params)["SUCCESS"] is True
        assert sim.state()["chats"]["demo|1|c1|0"]["name"] == "Group"


# -- delivery / reading ----------------------------------------------------------------------


def test_delivery_status_stores_external_ids_only_while_sending(sim: Sim) -> None:
    session = sim.send(message()).json()["result"]["DATA"]["RESULT"][0]["session"]
    posted = sim.http.post(
        "/_sim/operator-message", json={"chat_id": int(session["CHAT_ID"]), "text": "Hi!"}
    ).json()
    im = posted["im"]

    def deliver(ids: list[str]) -> Any:
        element = {"im": im, "message": {"id": ids}, "chat": {"id": "c1"}}
        return sim.ok(
            "imconnector.send.status.delivery",
            {"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": [element]},
        )

    assert deliver(["ext-out-1"]) == {"SUCCESS": True, "DATA": []}
    assert deliver(["ext-out-2"]) == {"SUCCESS": True, "DATA": []}
    state = sim.state()
    (chat,) = state["chats"].values()
    out = chat["messages"][-1]
    assert out["direction"] == "out"
    assert out["external_ids"] == ["ext-out-1"]  # the repeat changed nothing
    assert out["sending"] is False
    assert [d["stored"] for d in state["deliveries"]] == [True, False]


def test_delivery_for_unknown_im_ids_is_recorded_and_succeeds(sim: Sim) -> None:
    element = {
        "im": {"chat_id": 5, "message_id": 77},
        "message": {"id": ["x"]},
        "chat": {"id": "c"},
    }
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": [element]}
    assert sim.ok("imconnector.send.status.delivery", params)["SUCCESS"] is True
    (delivery,) = sim.state()["deliveries"]
    assert delivery["im_message_id"] == 77 and delivery["stored"] is False


def test_status_methods_check_arguments_and_provider(sim: Sim) -> None:
    for method in ("imconnector.send.status.delivery", "imconnector.send.status.reading"):
        assert_error(
            sim.call(method, {"CONNECTOR": CONNECTOR, "LINE": LINE}), 400, "ERROR_ARGUMENT"
        )
        response = sim.call(method, {"CONNECTOR": "ghost", "LINE": 1, "MESSAGES": [{}]})
        assert_error(response, 400, "IMCONNECTOR_NO_CORRECT_PROVIDER")


def test_reading_status_is_a_successful_stub(sim: Sim) -> None:
    element = {"im": {"chat_id": 1, "message_id": 2}, "message": {"id": ["x"]}, "chat": {"id": "c"}}
    params = {"CONNECTOR": CONNECTOR, "LINE": LINE, "MESSAGES": [element]}
    assert sim.ok("imconnector.send.status.reading", params) == {"SUCCESS": True, "DATA": []}
    assert sim.state()["deliveries"] == []


# -- legacy error shape ----------------------------------------------------------------------


def test_legacy_errors_return_http_200_with_success_false() -> None:
    with running_simulator(legacy_errors=True) as sim:
        response = sim.send(message(), line=42)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"result", "time"}
        assert body["result"]["SUCCESS"] is False
        assert body["result"]["error"] == "NOT_ACTIVE_LINE"
        assert body["result"]["error_description"]
        # Only the send/update/delete/status methods changed shape on old servers.
        assert_error(
            sim.call("imconnector.chat.name.set", {"CONNECTOR": CONNECTOR}), 400, "ERROR_ARGUMENT"
        )
        assert_error(sim.call("imconnector.unknown"), 404, "ERROR_METHOD_NOT_FOUND")


def test_legacy_errors_can_be_switched_at_runtime(sim: Sim) -> None:
    assert sim.send(message(), line=42).status_code == 400
    sim.http.post("/_sim/limits", json={"legacy_errors": True})
    legacy = sim.send(message(), line=42)
    assert legacy.status_code == 200
    assert legacy.json()["result"]["error"] == "NOT_ACTIVE_LINE"
