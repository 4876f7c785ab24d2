"""A portal whose domain changed answers 3xx: the client follows it to the new address."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from consumer.bitrix.client import BitrixClient, moved_endpoint
from consumer.bitrix.oauth import MemoryTokenStore
from consumer.errors import PermanentError
from consumer.settings import HttpSettings, PortalSettings

METHOD = "imconnector.send.status.delivery"
OLD = "https://old.bitrix24.com/rest/"
OK = orjson.dumps({"result": {"SUCCESS": True, "DATA": []}})


@pytest.mark.parametrize(
    ("location", "endpoint"),
    [
        (f"https://new.bitrix24.com/rest/{METHOD}", "https://new.bitrix24.com/rest/"),
        (f"https://new.bitrix24.com/rest/{METHOD}.json", "https://new.bitrix24.com/rest/"),
        (
            f"https://b24.example.org:8443/portal/rest/{METHOD}",
            "https://b24.example.org:8443/portal/rest/",
        ),
        (f"/rest/{METHOD}", "https://old.bitrix24.com/rest/"),
        (f"http://new.bitrix24.com/rest/{METHOD}", None),  # plain http: never with a token
        ("https://new.bitrix24.com/", None),  # not the /rest/<method> shape
        (f"https://new.bitrix24.com/api/{METHOD}", None),
        (f"https://user:pw@new.bitrix24.com/rest/{METHOD}", None),
    ],
)
def test_a_move_needs_https_and_the_same_rest_path_shape(
    location: str, endpoint: str | None
) -> None:
    assert moved_endpoint(OLD + METHOD, METHOD, location) == endpoint


def test_loopback_http_may_move_only_to_loopback_http() -> None:
    local = f"http://127.0.0.1:9/rest/{METHOD}"
    assert moved_endpoint(local, METHOD, f"http://localhost:9/rest/{METHOD}") == (
        "http://localhost:9/rest/"
    )
    assert moved_endpoint(local, METHOD, f"http://example.com/rest/{METHOD}") is None


class Portal:
    """Answers 302 on the old host and serves the new one; records the hosts called."""

    def __init__(self, location: str, status: int = 302) -> None:
        self.location = location
        self.status = status
        self.hosts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.host == "old.bitrix24.com":
            return httpx.Response(self.status, headers={"Location": self.location}, text="moved")
        return httpx.Response(200, content=OK)


def _client(portal: Portal, moves: list[str]) -> BitrixClient:
    settings = PortalSettings(
        rest_url=OLD,
        client_id="app",
        client_secret=SecretStr("s"),
        access_token=SecretStr("a"),
        refresh_token=SecretStr("r"),
    )
    client = BitrixClient({"p": settings}, HttpSettings(), MemoryTokenStore(), on_move=moves.append)
    client._http = {"p": httpx.AsyncClient(transport=httpx.MockTransport(portal))}
    return client


def _calls(client: BitrixClient, n: int) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        try:
            return [await client.call("p", METHOD, {"MESSAGES": [{}]}) for _ in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_client_follows_a_move_keeps_the_new_endpoint_and_reports_it_once(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    portal = Portal(f"https://new.bitrix24.com/rest/{METHOD}", status)
    moves: list[str] = []
    client = _client(portal, moves)
    bodies = _calls(client, 3)
    assert all(body["result"]["SUCCESS"] for body in bodies)
    assert portal.hosts == [
        "old.bitrix24.com",
        "new.bitrix24.com",
        "new.bitrix24.com",
        "new.bitrix24.com",
    ]
    assert moves == ["p"]
    assert client.moved == {"p": "https://new.bitrix24.com/rest/"}
    assert sum("moved" in record.getMessage() for record in caplog.records) == 1


def test_a_location_that_is_no_portal_move_is_a_clear_permanent_error() -> None:
    portal = Portal("http://evil.example.com/steal")
    moves: list[str] = []
    with pytest.raises(PermanentError) as failed:
        _calls(_client(portal, moves), 1)
    assert failed.value.code == "PORTAL_MOVED_INVALID"
    assert "rest_url" in str(failed.value)
    assert portal.hosts == ["old.bitrix24.com"] and moves == []  # the token went nowhere else


def test_a_redirect_loop_stops() -> None:
    portal = Portal(f"https://old.bitrix24.com/other/rest/{METHOD}")
    with pytest.raises(PermanentError) as failed:
        _calls(_client(portal, []), 1)
    assert failed.value.code == "PORTAL_MOVED"
