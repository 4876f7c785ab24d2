"""A token is only ever sent to its own portal's host (issue 15 item 10, architecture §6
invariant 6): a `client_endpoint` from the token store or an OAuth answer is used only on the
configured portal's host, or where the portal itself moved (a 3xx it answered)."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr

from consumer.bitrix.client import BitrixClient
from consumer.bitrix.oauth import MemoryTokenStore, TokenSet
from consumer.settings import HttpSettings, PortalSettings

CONFIGURED = "https://acme.bitrix24.com/rest/"


def client() -> BitrixClient:
    portal = PortalSettings(
        rest_url=CONFIGURED, client_id="local.app", client_secret=SecretStr("s")
    )
    return BitrixClient({"acme": portal}, HttpSettings(), MemoryTokenStore())


def pair(endpoint: str) -> TokenSet:
    return TokenSet("a", "r", 2e9, endpoint, 1.0)


def test_an_endpoint_on_another_host_is_not_used(caplog):
    bitrix = client()
    try:
        forged = pair("https://attacker.example/rest/")
        assert bitrix.endpoint("acme", forged) == CONFIGURED
        assert bitrix.endpoint("acme", pair("http://acme.bitrix24.com/rest/")) == CONFIGURED
        assert bitrix.endpoint("acme", pair("https://acme.bitrix24.com:8443/rest/")) == CONFIGURED
        warned = [r for r in caplog.records if "attacker.example" in r.getMessage()]
        assert len(warned) == 1, "said once"
    finally:
        asyncio.run(bitrix.aclose())


def test_an_endpoint_on_the_portals_host_is_used():
    bitrix = client()
    try:
        own = "https://acme.bitrix24.com/rest/"
        assert bitrix.endpoint("acme", pair(own)) == own
        assert bitrix.endpoint("acme", pair("")) == CONFIGURED
    finally:
        asyncio.run(bitrix.aclose())


def test_a_move_the_portal_answered_wins():
    bitrix = client()
    try:
        bitrix.moved["acme"] = "https://acme.bitrix24.eu/rest/"
        assert bitrix.endpoint("acme", pair("https://attacker.example/rest/")) == (
            "https://acme.bitrix24.eu/rest/"
        )
    finally:
        asyncio.run(bitrix.aclose())
