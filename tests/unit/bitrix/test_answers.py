"""Reading a portal's answers: ERRORS texts to codes, ambiguous sends, unknown shapes."""

# ruff: noqa: RUF001 - Russian texts as the server ships them (Cyrillic on purpose)
from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from consumer.bitrix.classify import check_answer, classify_error, element_results, for_method
from consumer.bitrix.client import BitrixClient
from consumer.bitrix.element_errors import ELEMENT_REJECTED, code_of_text, element_error_code
from consumer.bitrix.oauth import MemoryTokenStore
from consumer.errors import AmbiguousError, PermanentError, TransientError
from consumer.settings import HttpSettings, PortalSettings

SEND = "imconnector.send.messages"
UPDATE = "imconnector.update.messages"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Incomplete data", "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"),
        ("Переданы не все необходимые данные", "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"),
        (
            "Cannot create or get user mapped to external messenger user.",
            "CONNECTOR_PROXY_NO_ADD_USER",
        ),
        (
            "Не удалось создать или получить пользователя системы, сопоставленного с "
            "пользователем удаленного мессенджера",
            "CONNECTOR_PROXY_NO_ADD_USER",
        ),
        ("Failed to get IM user ID.", "CONNECTOR_PROXY_NO_USER_IM"),
        ("Не получен id пользователя мессенджера", "CONNECTOR_PROXY_NO_USER_IM"),
        ("Incorrect E-Mail<br>", "WRONG_EMAIL"),
        ("Неверный email.<br>", "WRONG_EMAIL"),
        (
            "A user with this e-mail address (ann@example.com) already exists.<br>",
            "USER_WITH_EMAIL_EXIST",
        ),
        ("CONNECTOR_PROXY_NO_ADD_USER", "CONNECTOR_PROXY_NO_ADD_USER"),
        ("Something new went wrong", None),
        ("Failed", None),
    ],
)
def test_the_texts_the_server_ships_map_to_stable_codes(text: str, code: str | None) -> None:
    assert code_of_text(text) == code


def test_an_elements_code_is_its_first_known_text_else_element_rejected() -> None:
    cuser = ["Incorrect E-Mail<br>", "Cannot create or get user mapped to external messenger user."]
    assert element_error_code(cuser) == "WRONG_EMAIL"
    assert element_error_code(["Не удалось что-то", "Incomplete data"]) == (
        "IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA"
    )
    assert element_error_code(["Не удалось что-то"]) == ELEMENT_REJECTED
    assert element_error_code([]) == ELEMENT_REJECTED


def test_element_results_give_the_code_and_keep_the_whole_text() -> None:
    body = {
        "result": {
            "SUCCESS": True,
            "DATA": {
                "RESULT": [
                    {"SUCCESS": True},
                    {"SUCCESS": False, "ERRORS": ["Неверный email.<br>", "Не удалось создать"]},
                    {"SUCCESS": False, "ERRORS": ["Ошибка нового вида"]},
                ]
            },
        }
    }
    assert element_results(body, 3) == [
        (True, None, ""),
        (False, "WRONG_EMAIL", "Неверный email.<br>; Не удалось создать"),
        (False, ELEMENT_REJECTED, "Ошибка нового вида"),
    ]


@pytest.mark.parametrize(
    ("status", "code", "ambiguous"),
    [
        (500, "INTERNAL_SERVER_ERROR", True),
        (502, None, True),  # also what a body that is not JSON becomes
        (504, None, True),
        (503, "OVERLOAD_LIMIT", False),  # the portal refused before running anything
    ],
)
def test_a_server_failure_on_a_send_is_ambiguous(
    status: int, code: str | None, ambiguous: bool
) -> None:
    exc = classify_error(status, code, "boom")
    assert isinstance(exc, TransientError)
    assert isinstance(for_method(SEND, exc), AmbiguousError) is ambiguous
    assert for_method(UPDATE, exc) is exc  # idempotent methods are simply retried


@pytest.mark.parametrize(
    "result",
    [
        [],
        {"SUCCESS": True},
        {"SUCCESS": True, "DATA": {"RESULT": {}}},
        {"SUCCESS": True, "DATA": {"RESULT": [{"SUCCESS": True}]}},  # one entry for two
        {"SUCCESS": True, "DATA": {"RESULT": [{"SUCCESS": True}, {"user": "5"}]}},
        {"SUCCESS": "Y", "DATA": {"RESULT": [{"SUCCESS": True}, {"SUCCESS": True}]}},
    ],
)
def test_an_answer_of_an_unknown_shape_is_never_success(result: Any) -> None:
    body = {"result": result}
    with pytest.raises(AmbiguousError) as sent:
        check_answer(SEND, body, 2)
    assert sent.value.code == "UNEXPECTED_ANSWER"
    with pytest.raises(PermanentError):
        check_answer(UPDATE, body, 2)


def test_the_documented_shapes_pass() -> None:
    rows = {"SUCCESS": True, "DATA": {"RESULT": [{"SUCCESS": True}, {"SUCCESS": False}]}}
    check_answer(SEND, {"result": rows}, 2)
    check_answer("imconnector.send.status.delivery", {"result": {"SUCCESS": True, "DATA": []}}, 1)
    check_answer(
        "imconnector.chat.name.set", {"result": {"SUCCESS": True, "DATA": {"RESULT": {}}}}, 0
    )
    check_answer("imconnector.register", {"result": {"result": True}}, 0)  # admin: own shape


def _client(handler: Any) -> BitrixClient:
    portal = PortalSettings(
        rest_url="https://portal.example.com/rest/",
        client_id="app",
        client_secret=SecretStr("s"),
        access_token=SecretStr("a"),
        refresh_token=SecretStr("r"),
    )
    client = BitrixClient({"p": portal}, HttpSettings(), MemoryTokenStore())
    client._http = {"p": httpx.AsyncClient(transport=httpx.MockTransport(handler))}
    return client


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (500, orjson.dumps({"error": "INTERNAL_SERVER_ERROR", "error_description": "x"})),
        (200, b"<html>gateway</html>"),
        (502, b"Bad Gateway"),
        (200, orjson.dumps({"result": {"SUCCESS": True, "DATA": {}}})),
    ],
)
def test_the_client_reports_an_untrustworthy_answer_to_a_send_as_ambiguous(
    status: int, content: bytes
) -> None:
    client = _client(lambda request: httpx.Response(status, content=content))
    params = {"CONNECTOR": "c", "LINE": 1, "MESSAGES": [{"user": {"id": "u"}}]}

    async def send() -> None:
        try:
            await client.call("p", SEND, params)
        finally:
            await client.aclose()

    with pytest.raises(AmbiguousError):
        asyncio.run(send())
