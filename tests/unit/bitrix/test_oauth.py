"""OAuth refresh without a network: serialised per portal, a replica that loses the race
adopts the pair the winner stored, `invalid_grant` re-reads the store, a new pair is saved
before it is used, and no secret reaches a repr or a log line.

The OAuth server is an `httpx.MockTransport` that rotates like Bitrix24's: each refresh
spends the refresh token it was given and answers `invalid_grant` to a spent one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from consumer.bitrix import oauth
from consumer.bitrix.oauth import MemoryTokenStore, PortalTokens, TokenSet
from consumer.errors import AuthFailed, TransientError
from consumer.logs import JsonFormatter, TextFormatter

OAUTH_URL = "https://oauth.bitrix.info/oauth/token/"
CLIENT_ID = "local.app.1"
CLIENT_SECRET = "client-secret-Zq7"
ENDPOINT = "https://portal.example/rest/"
OLD = TokenSet("access-old-1", "refresh-old-1", 2e9, ENDPOINT, issued_at=1_000.0)
T = TypeVar("T")


class OAuthServer:
    """Bitrix24's token endpoint: one live refresh token per portal, rotated on each use."""

    def __init__(self, live: dict[str, str] | None = None) -> None:
        self.live = dict(live or {"p1": OLD.refresh_token})
        self.requests: list[dict[str, str]] = []
        self.issued = 0
        self.entered = asyncio.Event()  # a request arrived
        self.hold: dict[str, asyncio.Event] = {}  # portal -> released when set
        self.status: int | None = None  # answer every request with this status instead

    async def handler(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        portal = request.url.host.split(".")[0] if "portal-" in request.url.host else "p1"
        self.requests.append(params)
        self.entered.set()
        if portal in self.hold:
            await self.hold[portal].wait()
        if self.status is not None:
            return httpx.Response(self.status, text="<html>Bad gateway</html>")
        if params.get("refresh_token") != self.live.get(portal):
            return httpx.Response(
                400, json={"error": "invalid_grant", "error_description": "Invalid grant"}
            )
        self.issued += 1
        pair = self.pair(portal, self.issued)
        self.live[portal] = pair.refresh_token
        return httpx.Response(
            200,
            json={
                "access_token": pair.access_token,
                "refresh_token": pair.refresh_token,
                "expires": 2_000_000_000,
                "expires_in": 3600,
                "client_endpoint": ENDPOINT,
                "member_id": "m1",
            },
        )

    @staticmethod
    def pair(portal: str, n: int) -> TokenSet:
        return TokenSet(f"access-{portal}-{n}", f"refresh-{portal}-{n}", 2e9, ENDPOINT, 2_000.0)


class ReplicaStore(MemoryTokenStore):
    """The shared store as one replica sees it: what it saves, when, and how often it reads;
    `arrives` is another replica's pair that lands on the `arrives_at`-th read."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.saved: list[TokenSet] = []
        self.arrives: TokenSet | None = None
        self.arrives_at = 0
        self.on_save: Callable[[TokenSet], None] | None = None

    def load(self, portal: str) -> TokenSet | None:
        self.loads += 1
        if self.arrives is not None and self.loads >= self.arrives_at:
            super().save(portal, self.arrives)
        return super().load(portal)

    def save(self, portal: str, tokens: TokenSet) -> None:
        if self.on_save is not None:
            self.on_save(tokens)
        super().save(portal, tokens)
        self.saved.append(tokens)


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(make(), 30)

    return asyncio.run(main())


def tokens_for(
    store: ReplicaStore,
    http: httpx.AsyncClient,
    portal: str = "p1",
    initial: TokenSet | None = OLD,
) -> tuple[PortalTokens, list[str]]:
    results: list[str] = []
    tokens = PortalTokens(
        portal,
        initial,
        oauth_url=OAUTH_URL if portal == "p1" else f"https://{portal}.example/oauth/token/",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        store=store,
        http=http,
        on_refresh=results.append,
    )
    return tokens, results


def client(server: OAuthServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server.handler))


@pytest.fixture
def retry_delays(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The waits between re-reads of the store after `invalid_grant`, taken without waiting."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def no_wait(delay: float, result: Any = None) -> Any:
        delays.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(oauth.asyncio, "sleep", no_wait)
    yield delays


def test_a_refresh_sends_the_refresh_grant_and_uses_the_new_pair() -> None:
    server, store = OAuthServer(), ReplicaStore()

    async def scenario() -> TokenSet:
        async with client(server) as http:
            tokens, results = tokens_for(store, http)
            fresh = await tokens.refresh(OLD.access_token)
            assert tokens.current() == fresh
            assert results == ["ok"]
            return fresh

    fresh = run(scenario)
    assert server.requests == [
        {
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": OLD.refresh_token,
        }
    ]
    assert (fresh.access_token, fresh.refresh_token) == ("access-p1-1", "refresh-p1-1")
    assert fresh.client_endpoint == ENDPOINT
    assert store.saved == [fresh]


def test_refreshes_of_one_portal_are_serialised_into_one_request() -> None:
    server, store = OAuthServer(), ReplicaStore()

    async def scenario() -> list[TokenSet]:
        server.entered = asyncio.Event()
        server.hold["p1"] = asyncio.Event()
        async with client(server) as http:
            tokens, results = tokens_for(store, http)
            # Eight calls of one portal got expired_token with the same access token.
            calls = [asyncio.create_task(tokens.refresh(OLD.access_token)) for _ in range(8)]
            await server.entered.wait()
            second = asyncio.Event()
            server.entered = second
            with pytest.raises(TimeoutError):  # no second request while the first is out
                await asyncio.wait_for(second.wait(), 0.3)
            server.hold["p1"].set()
            done = await asyncio.gather(*calls)
            assert results == ["ok"]
            return done

    done = run(scenario)
    assert len(server.requests) == 1
    assert {t.access_token for t in done} == {"access-p1-1"}


def test_portals_refresh_independently() -> None:
    server = OAuthServer({"p1": OLD.refresh_token, "portal-2": OLD.refresh_token})

    async def scenario() -> TokenSet:
        server.entered = asyncio.Event()
        server.hold["p1"] = asyncio.Event()
        async with client(server) as http:
            first, _ = tokens_for(ReplicaStore(), http)
            other, _ = tokens_for(ReplicaStore(), http, "portal-2")
            held = asyncio.create_task(first.refresh(OLD.access_token))
            await server.entered.wait()
            # p1's refresh is still out; portal-2's does not wait for it.
            fresh = await asyncio.wait_for(other.refresh(OLD.access_token), 5)
            assert not held.done()
            server.hold["p1"].set()
            await held
            return fresh

    assert run(scenario).access_token == "access-portal-2-1"


def test_a_replica_that_loses_the_race_adopts_the_stored_pair() -> None:
    server, store = OAuthServer(), ReplicaStore()

    async def scenario() -> None:
        async with client(server) as http_a, client(server) as http_b:
            replica_a, _ = tokens_for(store, http_a)
            replica_b, results_b = tokens_for(store, http_b)
            winner = await replica_a.refresh(OLD.access_token)
            # Replica B got expired_token for the same pair a moment later.
            assert await replica_b.refresh(OLD.access_token) == winner
            assert replica_b.current() == winner
            assert results_b == ["adopted"]

    run(scenario)
    assert len(server.requests) == 1  # B never spent A's new refresh token


def test_invalid_grant_re_reads_the_store_until_the_winners_pair_lands(
    retry_delays: list[float],
) -> None:
    server, store = OAuthServer(), ReplicaStore()
    # Another replica spent the refresh token; its new pair reaches the store on the 4th read
    # (start-up, the refresh's first look, then the re-reads after invalid_grant).
    server.live["p1"] = "refresh-spent-by-the-winner"
    winner = TokenSet("access-winner", "refresh-winner", 2e9, ENDPOINT, issued_at=1_500.0)
    store.arrives, store.arrives_at = winner, 4

    async def scenario() -> None:
        async with client(server) as http:
            tokens, results = tokens_for(store, http)
            assert await tokens.refresh(OLD.access_token) == winner
            assert tokens.current() == winner
            assert results == ["adopted"]

    run(scenario)
    assert len(server.requests) == 1
    assert store.loads == 4  # start-up, before the request, then after 0.2 s and 0.5 s
    assert retry_delays == [0.2, 0.5]
    assert store.saved == []  # nothing of its own to save


def test_invalid_grant_with_no_newer_pair_stored_fails_with_the_fix(
    retry_delays: list[float],
) -> None:
    server, store = OAuthServer({"p1": "someone-elses"}), ReplicaStore()

    async def scenario() -> None:
        async with client(server) as http:
            tokens, results = tokens_for(store, http)
            with pytest.raises(AuthFailed) as failed:
                await tokens.refresh(OLD.access_token)
            assert failed.value.code == "invalid_grant"
            assert "tokens seed" in str(failed.value)
            assert tokens.current() == OLD
            assert results == ["failed"]

    run(scenario)
    assert retry_delays == [0.2, 0.5, 1.0, 2.0]
    assert store.loads == 6  # start-up, before the request, four re-reads


def test_the_new_pair_is_saved_before_it_is_used() -> None:
    server, store = OAuthServer(), ReplicaStore()
    in_use_at_save: list[TokenSet] = []

    async def scenario() -> None:
        async with client(server) as http:
            tokens, _ = tokens_for(store, http)
            store.on_save = lambda _pair: in_use_at_save.append(tokens.current())
            fresh = await tokens.refresh(OLD.access_token)
            assert store.load("p1") == fresh

    run(scenario)
    assert in_use_at_save == [OLD]


def test_a_pair_that_could_not_be_saved_is_kept_not_used_and_saved_on_the_next_try(
    retry_delays: list[float],
) -> None:
    """Its refresh token replaced the old one: losing the pair would lock the portal out.
    It stays in memory, unused, and the next refresh saves it without asking the OAuth
    server again (the old refresh token is spent)."""
    server, store = OAuthServer(), ReplicaStore()
    down = True

    def broker(_pair: TokenSet) -> None:
        if down:
            raise OSError("token save not acknowledged")

    store.on_save = broker

    async def scenario() -> None:
        nonlocal down
        async with client(server) as http:
            tokens, results = tokens_for(store, http)
            with pytest.raises(TransientError, match="kept and saved before it is used"):
                await tokens.refresh(OLD.access_token)
            assert tokens.current() == OLD, "not used before it is saved"
            assert results == [] and len(server.requests) == 1
            down = False
            fresh = await tokens.refresh(OLD.access_token)
            assert fresh.access_token == OAuthServer.pair("p1", 1).access_token
            assert tokens.current() == fresh and store.load("p1") == fresh
            assert len(server.requests) == 1, "the spent refresh token was not sent again"
            assert results == ["ok"]

    run(scenario)
    assert retry_delays.count(0.5) >= 1  # the save was retried before giving up


def test_a_refresh_already_done_by_another_call_is_not_repeated() -> None:
    server, store = OAuthServer(), ReplicaStore()

    async def scenario() -> None:
        async with client(server) as http:
            tokens, _ = tokens_for(store, http)
            fresh = await tokens.refresh(OLD.access_token)
            # A call that started with the old pair reports expired_token late.
            assert await tokens.refresh(OLD.access_token) == fresh

    run(scenario)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_an_oauth_server_error_is_transient(status: int) -> None:
    server, store = OAuthServer(), ReplicaStore()
    server.status = status

    async def scenario() -> None:
        async with client(server) as http:
            tokens, results = tokens_for(store, http)
            with pytest.raises(TransientError) as failed:
                await tokens.refresh(OLD.access_token)
            assert (failed.value.code, failed.value.http_status) == ("OAUTH_5XX", status)
            assert tokens.current() == OLD and results == []

    run(scenario)


def test_an_unreachable_oauth_server_is_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
            tokens, _ = tokens_for(ReplicaStore(), http)
            with pytest.raises(TransientError) as failed:
                await tokens.refresh(OLD.access_token)
            assert failed.value.code == "OAUTH_UNREACHABLE"

    run(scenario)


def test_the_newest_of_the_configured_and_the_stored_pair_is_used() -> None:
    store = ReplicaStore()
    newer = TokenSet("access-stored", "refresh-stored", 2e9, ENDPOINT, issued_at=1_500.0)
    store.save("p1", newer)

    async def scenario() -> None:
        async with client(OAuthServer()) as http:
            assert tokens_for(store, http)[0].current() == newer
            older = TokenSet("a", "r", 2e9, ENDPOINT, issued_at=500.0)
            assert tokens_for(store, http, initial=older)[0].current() == newer
            assert tokens_for(ReplicaStore(), http)[0].current() == OLD

    run(scenario)


def test_no_pair_at_all_names_the_fix() -> None:
    async def scenario() -> None:
        async with client(OAuthServer()) as http:
            tokens, _ = tokens_for(ReplicaStore(), http, initial=None)
            with pytest.raises(AuthFailed, match="tokens seed") as failed:
                tokens.current()
            assert failed.value.code == "NO_TOKENS"

    run(scenario)


def test_a_pair_round_trips_through_the_store_encoding() -> None:
    assert TokenSet.from_json(OLD.to_json()) == OLD


def test_no_secret_in_a_repr_an_error_or_a_log_line(
    caplog: pytest.LogCaptureFixture, retry_delays: list[float]
) -> None:
    secrets = {OLD.access_token, OLD.refresh_token, CLIENT_SECRET, "access-p1-1", "refresh-p1-1"}
    assert not any(s in repr(OLD) for s in secrets)
    server = OAuthServer()

    async def scenario() -> list[str]:
        async with client(server) as http:
            tokens, _ = tokens_for(ReplicaStore(), http)
            fresh = await tokens.refresh(OLD.access_token)
            texts = [repr(fresh), repr(tokens)]
            # The pair refreshed above is spent by another replica: invalid_grant.
            server.live["p1"] = "spent"
            with pytest.raises(AuthFailed) as failed:
                await tokens.refresh(fresh.access_token)
            texts += [str(failed.value), repr(failed.value)]
            return texts

    with caplog.at_level(logging.DEBUG):
        texts = run(scenario)
    assert any(r.getMessage() == "refreshed OAuth tokens" for r in caplog.records)
    assert any("oauth/token" in r.getMessage() for r in caplog.records)  # httpx's request line
    for record in caplog.records:
        texts += [JsonFormatter().format(record), TextFormatter().format(record)]
        if record.name.startswith("consumer"):
            texts.append(str(record.__dict__))  # the service's own records, raw
    leaks = [(s, t) for t in texts for s in secrets if s in t]
    assert not leaks
