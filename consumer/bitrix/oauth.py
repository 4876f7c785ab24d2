"""OAuth 2.0 tokens per portal: refresh on `expired_token`, serialised, shared across replicas.

Bitrix24 rotates refresh tokens: each refresh returns a new pair and spends the old one.
So refreshes are serialised per portal inside a process, every new pair is saved to the
`TokenStore` (a compacted Kafka topic in production) before it is used, and a replica
that loses the race (`invalid_grant`) adopts the pair the winner saved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import httpx

from consumer.errors import AuthFailed, TransientError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenSet:
    """One access/refresh pair and where to call with it."""

    access_token: str
    refresh_token: str
    expires_at: float  # unix seconds
    client_endpoint: str
    issued_at: float  # unix seconds; the newest pair wins

    def __repr__(self) -> str:  # never print secrets, even in a traceback
        return f"TokenSet(client_endpoint={self.client_endpoint!r}, issued_at={self.issued_at})"

    def to_json(self) -> bytes:
        """Serialise for the token store."""
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TokenSet:
        """Inverse of `to_json`."""
        return cls(**json.loads(data))


class TokenStore(Protocol):
    """Where token pairs live between processes (a compacted Kafka topic in production)."""

    def load(self, portal: str) -> TokenSet | None:
        """The newest saved pair for `portal`, if any."""

    def save(self, portal: str, tokens: TokenSet) -> None:
        """Durably save `tokens` as the newest pair for `portal`."""


class MemoryTokenStore:
    """A process-local `TokenStore` (tests, the demo's single process)."""

    def __init__(self) -> None:
        self._tokens: dict[str, TokenSet] = {}

    def load(self, portal: str) -> TokenSet | None:
        """The newest saved pair."""
        return self._tokens.get(portal)

    def save(self, portal: str, tokens: TokenSet) -> None:
        """Keep `tokens` if newer than what is stored."""
        current = self._tokens.get(portal)
        if current is None or tokens.issued_at >= current.issued_at:
            self._tokens[portal] = tokens


class PortalTokens:
    """The live token pair of one portal and its serialised refresh."""

    def __init__(
        self,
        portal: str,
        initial: TokenSet | None,
        *,
        oauth_url: str,
        client_id: str,
        client_secret: str,
        store: TokenStore,
        http: httpx.AsyncClient,
        on_refresh: object = None,
    ) -> None:
        self.portal = portal
        self._oauth_url = oauth_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._store = store
        self._http = http
        self._lock = asyncio.Lock()
        self._unsaved: TokenSet | None = None  # refreshed, not yet in the store
        self._on_refresh = on_refresh
        stored = store.load(portal)
        self._tokens = (
            stored
            if stored is not None and (initial is None or stored.issued_at >= initial.issued_at)
            else initial
        )

    def current(self) -> TokenSet:
        """The pair to call with now."""
        if self._tokens is None:
            raise AuthFailed(
                f"no OAuth tokens for portal {self.portal!r}: seed them with "
                "'imconnector-consumer tokens seed' or set access_token/refresh_token",
                code="NO_TOKENS",
            )
        return self._tokens

    async def refresh(self, failed_access_token: str) -> TokenSet:
        """Get a fresh pair after `failed_access_token` was rejected. One refresh at a time."""
        async with self._lock:
            if self._tokens is not None and self._tokens.access_token != failed_access_token:
                return self._tokens  # another call refreshed while we waited
            adopted = await asyncio.to_thread(self._store.load, self.portal)
            if (
                adopted is not None
                and adopted.access_token != failed_access_token
                and (self._tokens is None or adopted.issued_at > self._tokens.issued_at)
            ):
                self._tokens = adopted
                self._count("adopted")
                return adopted
            if self._unsaved is not None:  # a pair refreshed earlier whose save failed
                return await self._keep(self._unsaved)
            current = self.current()
            try:
                fresh = await self._request(current.refresh_token)
            except AuthFailed:
                # Lost a race with another replica? Its pair reaches the store shortly.
                for delay in (0.2, 0.5, 1.0, 2.0):
                    await asyncio.sleep(delay)
                    adopted = await asyncio.to_thread(self._store.load, self.portal)
                    if adopted is not None and adopted.refresh_token != current.refresh_token:
                        self._tokens = adopted
                        self._count("adopted")
                        return adopted
                self._count("failed")
                raise
            # The old refresh token is spent: from here on, this pair is the only way in.
            self._unsaved = fresh
            return await self._keep(fresh)

    async def _keep(self, fresh: TokenSet) -> TokenSet:
        """Save a new pair, then use it. A store that fails keeps the pair in memory (never
        dropped: its refresh token replaced the old one) and the call waits; the next
        refresh saves it before anything else."""
        for delay in (0.0, 0.5, 1.0, 2.0):
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self._store.save, self.portal, fresh)
                break
            except Exception as exc:  # noqa: BLE001 - any store failure: kept, retried
                logger.warning(
                    "saving refreshed OAuth tokens failed (%s); kept in memory, retrying",
                    type(exc).__name__,
                    extra={"portal": self.portal},
                )
        else:
            raise TransientError(
                f"the token store did not take the refreshed pair of portal {self.portal!r}; "
                "it is kept and saved before it is used",
                code="TOKEN_SAVE_FAILED",
            )
        self._unsaved = None
        self._tokens = fresh
        self._count("ok")
        logger.info("refreshed OAuth tokens", extra={"portal": self.portal})
        return fresh

    def _count(self, result: str) -> None:
        if callable(self._on_refresh):
            self._on_refresh(result)

    async def _request(self, refresh_token: str) -> TokenSet:
        params = {
            "grant_type": "refresh_token",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "refresh_token": refresh_token,
        }
        try:
            response = await self._http.get(self._oauth_url, params=params)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"OAuth server unreachable: {type(exc).__name__}", code="OAUTH_UNREACHABLE"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 500:
            raise TransientError(
                f"OAuth server answered HTTP {response.status_code}",
                code="OAUTH_5XX",
                http_status=response.status_code,
            )
        if response.status_code != 200 or "access_token" not in body:
            code = str(body.get("error", f"HTTP_{response.status_code}"))
            raise AuthFailed(
                f"token refresh for portal {self.portal!r} failed with {code}: "
                f"{body.get('error_description', '')} — re-seed the tokens "
                "('imconnector-consumer tokens seed')",
                code=code,
                http_status=response.status_code,
            )
        now = time.time()
        return TokenSet(
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
            expires_at=float(body.get("expires") or now + float(body.get("expires_in", 3600))),
            client_endpoint=str(
                body.get("client_endpoint")
                or (self._tokens.client_endpoint if self._tokens else "")
            ),
            issued_at=now,
        )
