"""The Bitrix24 REST client: one POST per call with the portal's OAuth token, errors classified.

Refreshes the token once on `expired_token`/`invalid_token`/`NO_AUTH_FOUND` and repeats the
call; a second auth failure is permanent (`AuthFailed`). Limits and retries are the
dispatcher's job (`consumer.dispatch.dispatcher`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from consumer.bitrix.classify import check_response, classify_transport
from consumer.bitrix.oauth import PortalTokens, TokenSet, TokenStore
from consumer.errors import AuthError, AuthFailed, ConfigError
from consumer.settings import HttpSettings, PortalSettings

_JSON = {"Content-Type": "application/json"}


def seed_tokens(settings: PortalSettings) -> TokenSet | None:
    """The token pair given in the settings, if any (older than anything in the store)."""
    if settings.access_token is None or settings.refresh_token is None:
        return None
    return TokenSet(
        access_token=settings.access_token.get_secret_value(),
        refresh_token=settings.refresh_token.get_secret_value(),
        expires_at=0.0,
        client_endpoint=settings.rest_url,
        issued_at=0.0,
    )


def http_client(http_settings: HttpSettings) -> httpx.AsyncClient:
    """The client for portals: timeouts and pool size from the settings; proxies from the
    environment (`HTTPS_PROXY`, `NO_PROXY`), as httpx reads them."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            http_settings.read_timeout_s, connect=http_settings.connect_timeout_s
        ),
        limits=httpx.Limits(
            max_connections=http_settings.max_connections,
            max_keepalive_connections=http_settings.max_connections,
        ),
        headers={"User-Agent": http_settings.user_agent, "Accept": "application/json"},
    )


class BitrixClient:
    """Calls `imconnector.*` methods on the configured portals, each through a connection
    pool of its own (one portal's hung requests never hold another's connections)."""

    def __init__(
        self,
        portals: dict[str, PortalSettings],
        http_settings: HttpSettings,
        store: TokenStore,
        *,
        on_refresh: object = None,
    ) -> None:
        self._http = {name: http_client(http_settings) for name in portals}
        self.portals = portals
        self.tokens: dict[str, PortalTokens] = {
            name: PortalTokens(
                name,
                seed_tokens(cfg),
                oauth_url=cfg.oauth_url,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret.get_secret_value(),
                store=store,
                http=self._http[name],
                on_refresh=on_refresh,
            )
            for name, cfg in portals.items()
        }

    async def aclose(self) -> None:
        """Close the connection pools."""
        for http in self._http.values():
            await http.aclose()

    def _portal(self, portal: str) -> PortalTokens:
        tokens = self.tokens.get(portal)
        if tokens is None:
            raise ConfigError(f"portal {portal!r} is not configured (IMCONNECTOR_PORTALS)")
        return tokens

    async def call(self, portal: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """POST `method` with `params`; return the envelope or raise a `BitrixError`."""
        tokens = self._portal(portal)
        # Refresh at most twice: a pair can expire again right after a refresh (another
        # replica rotated it); a third rejection means the app lost its authorisation.
        for attempt in (1, 2, 3):
            current = tokens.current()
            endpoint = current.client_endpoint or self.portals[portal].rest_url
            try:
                response = await self._http[portal].post(
                    f"{endpoint}{method}",
                    content=orjson.dumps({**params, "auth": current.access_token}),
                    headers=_JSON,
                )
            except httpx.HTTPError as exc:
                raise classify_transport(exc) from None
            try:
                return check_response(response)
            except AuthError as exc:
                if attempt == 3:
                    raise AuthFailed(
                        f"still unauthorised after a token refresh: {exc}",
                        code=exc.code,
                        http_status=exc.http_status,
                    ) from None
                await tokens.refresh(current.access_token)
        raise AssertionError("unreachable")

    async def batch(self, portal: str, method: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """Run `method` once per entry of `calls` in one REST `batch` request (halt=0).

        Sub-calls are keyed `c0`, `c1`, ... in order; see `classify.batch_results`. Only
        flat parameters (e.g. `chat.name.set`) are encoded here.
        """
        cmd = {f"c{index}": f"{method}?{urlencode(params)}" for index, params in enumerate(calls)}
        return await self.call(portal, "batch", {"halt": 0, "cmd": cmd})
