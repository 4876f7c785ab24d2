"""The simulator's OAuth: 401 codes, expiry by clock, refresh rotation, token errors (§5.4, §7)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from simulator_fixtures import CONNECTOR, LINE, Sim, running_simulator

TOKEN_KEYS = {
    "access_token",
    "refresh_token",
    "expires",
    "expires_in",
    "client_endpoint",
    "server_endpoint",
    "domain",
    "member_id",
    "scope",
    "status",
    "user_id",
}


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_simulator() as running:
        yield running


def status_call(sim: Sim, token: str | None) -> httpx.Response:
    body: dict[str, Any] = {"CONNECTOR": CONNECTOR, "LINE": LINE}
    if token is not None:
        body["auth"] = token
    return sim.http.post("/rest/imconnector.status", json=body)


def refresh(sim: Sim, token: str, *, via: str = "GET", **overrides: str) -> httpx.Response:
    params = {
        "grant_type": "refresh_token",
        "client_id": "local.imconnector.sim",
        "client_secret": "sim-secret",
        "refresh_token": token,
        **overrides,
    }
    params = {k: v for k, v in params.items() if v}
    if via == "GET":
        return sim.http.get("/oauth/token/", params=params)
    return sim.http.post("/oauth/token/", data=params)


def assert_auth_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == code


def test_issued_pair_has_the_token_endpoint_shape(sim: Sim) -> None:
    tokens = sim.tokens
    assert set(tokens) == TOKEN_KEYS
    assert tokens["client_endpoint"] == f"{sim.server.url}/rest/"
    assert tokens["expires_in"] == 3600
    assert tokens["expires"] == int(sim.clock() + 3600)
    assert tokens["scope"] == "imopenlines,imconnector"
    assert tokens["status"] == "L"
    assert tokens["domain"] == "oauth.bitrix.info"
    assert tokens["access_token"] != tokens["refresh_token"]


@pytest.mark.parametrize("token", [None, "", "not-a-real-token"])
def test_missing_or_unknown_token_is_no_auth_found(sim: Sim, token: str | None) -> None:
    assert_auth_error(status_call(sim, token), 401, "NO_AUTH_FOUND")


def test_access_token_expires_after_its_ttl(sim: Sim) -> None:
    assert status_call(sim, sim.token).status_code == 200
    sim.clock.advance(3599)
    assert status_call(sim, sim.token).status_code == 200
    sim.clock.advance(1)
    assert_auth_error(status_call(sim, sim.token), 401, "expired_token")


@pytest.mark.parametrize("via", ["GET", "POST"])
def test_refresh_rotates_and_spends_the_old_pair(sim: Sim, via: str) -> None:
    old = sim.tokens
    sim.clock.advance(4000)
    assert_auth_error(status_call(sim, old["access_token"]), 401, "expired_token")
    response = refresh(sim, old["refresh_token"], via=via)
    assert response.status_code == 200, response.text
    new = response.json()
    assert set(new) == TOKEN_KEYS
    assert new["refresh_token"] != old["refresh_token"]
    assert new["client_endpoint"] == f"{sim.server.url}/rest/"
    assert status_call(sim, new["access_token"]).status_code == 200
    # The spent refresh token is dead, and so is the access token issued with it.
    assert_auth_error(refresh(sim, old["refresh_token"], via=via), 400, "invalid_grant")
    assert_auth_error(status_call(sim, old["access_token"]), 401, "invalid_token")


def test_refresh_before_expiry_invalidates_the_live_access_token(sim: Sim) -> None:
    old = sim.tokens
    new = refresh(sim, old["refresh_token"]).json()
    assert_auth_error(status_call(sim, old["access_token"]), 401, "invalid_token")
    assert status_call(sim, new["access_token"]).status_code == 200
    # Chains do not branch: the new refresh token works exactly once too.
    newer = refresh(sim, new["refresh_token"])
    assert newer.status_code == 200
    assert_auth_error(refresh(sim, new["refresh_token"]), 400, "invalid_grant")


def test_unknown_refresh_token_is_invalid_grant(sim: Sim) -> None:
    assert_auth_error(refresh(sim, "made-up"), 400, "invalid_grant")


@pytest.mark.parametrize("overrides", [{"client_secret": "wrong"}, {"client_id": "someone.else"}])
def test_bad_client_credentials_are_invalid_client(sim: Sim, overrides: dict[str, str]) -> None:
    assert_auth_error(refresh(sim, sim.tokens["refresh_token"], **overrides), 401, "invalid_client")
    # A refused refresh spends nothing.
    assert refresh(sim, sim.tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize("missing", ["grant_type", "client_id", "client_secret", "refresh_token"])
def test_missing_token_parameters_are_invalid_request(sim: Sim, missing: str) -> None:
    response = refresh(sim, sim.tokens["refresh_token"], **{missing: ""})
    assert_auth_error(response, 400, "invalid_request")


def test_expire_tokens_admin_endpoint_forces_expired_token(sim: Sim) -> None:
    expired = sim.http.post("/_sim/expire-tokens").json()
    assert expired == {"expired": 1}
    assert_auth_error(status_call(sim, sim.token), 401, "expired_token")
    fresh = refresh(sim, sim.tokens["refresh_token"]).json()
    assert status_call(sim, fresh["access_token"]).status_code == 200


def test_token_expiry_every_nth_call_forces_a_refresh() -> None:
    with running_simulator(token_expiry_every=3) as sim:
        statuses = [status_call(sim, sim.token).status_code for _ in range(3)]
        assert statuses == [200, 200, 401]
        assert status_call(sim, sim.token).json()["error"] == "expired_token"
        fresh = refresh(sim, sim.tokens["refresh_token"]).json()
        assert status_call(sim, fresh["access_token"]).status_code == 200


def test_admin_tokens_endpoint_issues_a_working_pair(sim: Sim) -> None:
    pair = sim.http.post("/_sim/tokens").json()
    assert set(pair) == TOKEN_KEYS
    assert status_call(sim, pair["access_token"]).status_code == 200
    # Other chains are untouched.
    assert status_call(sim, sim.token).status_code == 200


def test_auth_failures_are_not_applied(sim: Sim) -> None:
    response = sim.http.post(
        "/rest/imconnector.send.messages",
        json={
            "auth": "bogus",
            "CONNECTOR": CONNECTOR,
            "LINE": LINE,
            "MESSAGES": [{"user": {"id": "u"}, "message": {"text": "x"}, "chat": {"id": "c"}}],
        },
    )
    assert_auth_error(response, 401, "NO_AUTH_FOUND")
    assert sim.state()["chats"] == {}
    (call,) = sim.calls()
    assert call["applied"] is False and call["error"] == "NO_AUTH_FOUND"
