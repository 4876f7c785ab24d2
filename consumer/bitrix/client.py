"""The Bitrix24 REST client: one POST per call with the portal's OAuth token, errors classified.

Refreshes the token once on `expired_token`/`invalid_token`/`NO_AUTH_FOUND` and repeats the
call; a second auth failure is permanent (`AuthFailed`). Limits and retries are the
dispatcher's job (`consumer.dispatch.dispatcher`).

A portal whose domain changed answers 301/302/307/308 with the new address in `Location`
(b24pysdk `bitrix_token.py` switches domain on it; reference §1 finding 6). The client
follows it when the new address is https with the same `/rest/<method>` path shape, keeps
it as that portal's endpoint from then on, logs the move once and reports it (`on_move`);
any other `Location` is a permanent error that says what to fix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
import orjson

from consumer.bitrix.classify import check_answer, check_response, classify_transport, for_method
from consumer.bitrix.oauth import PortalTokens, TokenSet, TokenStore
from consumer.errors import AuthError, AuthFailed, BitrixError, ConfigError, PermanentError
from consumer.settings import HttpSettings, PortalSettings

logger = logging.getLogger(__name__)

_JSON = {"Content-Type": "application/json"}
MOVED = frozenset({301, 302, 307, 308})
MAX_MOVES = 3  # per call: a longer chain (or a loop) is not a domain move
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# What the portal's `batch` rewrites inside a sub-call's values (rest module
# `rest_util.php::processBatchElement`: `/\$(result|next|total|time|error)([^\s]*)/i` with a
# `[key]` in the rest): no escape exists, so such a call must not go inside `batch`.
_BATCH_PLACEHOLDER = re.compile(r"\$(?:result|next|total|time|error)\S*\[[^\]]+\]", re.IGNORECASE)


def batch_safe(params: dict[str, Any]) -> bool:
    """True when `batch` would pass `params` through unchanged (no placeholder in a value)."""
    return not any(
        isinstance(value, str) and _BATCH_PLACEHOLDER.search(value) for value in params.values()
    )


def moved_endpoint(request_url: str, method: str, location: str) -> str | None:
    """The new endpoint (`https://host/rest/`) a redirect of `request_url` to `location`
    names, or None when it is not a portal move: not https (plain http only from a
    loopback address to a loopback address, for the simulator), not `.../rest/<method>`,
    or carrying credentials."""
    source = urlsplit(request_url)
    target = urlsplit(urljoin(request_url, location))
    local = source.scheme == "http" and source.hostname in _LOOPBACK
    if not target.hostname or target.username or target.password:
        return None
    if target.scheme != "https" and not (
        local and target.scheme == "http" and target.hostname in _LOOPBACK
    ):
        return None
    path = target.path
    for tail in (method, f"{method}.json"):
        if path.endswith("/rest/" + tail):
            return f"{target.scheme}://{target.netloc}{path[: -len(tail)]}"
    return None


def _origin(url: str) -> str:
    """`scheme://host:port` of a URL (what a token may be sent to)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


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
        on_move: Callable[[str], None] | None = None,
    ) -> None:
        self._http = {name: http_client(http_settings) for name in portals}
        self.portals = portals
        self.moved: dict[str, str] = {}  # portal -> endpoint it moved to (301/302/307/308)
        self._distrusted: set[str] = set()  # portals whose offered endpoint was refused
        self._on_move = on_move
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
            content = orjson.dumps({**params, "auth": current.access_token})
            response = await self._post(portal, method, content, current)
            try:
                body = check_response(response)
            except AuthError as exc:
                if attempt == 3:
                    raise AuthFailed(
                        f"still unauthorised after a token refresh: {exc}",
                        code=exc.code,
                        http_status=exc.http_status,
                    ) from None
                await tokens.refresh(current.access_token)
                continue
            except BitrixError as exc:
                raise for_method(method, exc) from None
            check_answer(method, body, len(params.get("MESSAGES") or ()))
            return body
        raise AssertionError("unreachable")

    def endpoint(self, portal: str, tokens: TokenSet) -> str:
        """Where `portal`'s calls go: the address it moved to, else the token's
        `client_endpoint` when it is on the portal's own host, else the configured
        `rest_url`. A token is never sent to a host the portal did not name itself."""
        moved = self.moved.get(portal)
        if moved:
            return moved
        configured = self.portals[portal].rest_url
        offered = tokens.client_endpoint
        if not offered or offered == configured:
            return configured
        if _origin(offered) == _origin(configured):
            return offered
        if portal not in self._distrusted:
            self._distrusted.add(portal)
            logger.warning(
                "portal %s: the client_endpoint %s from the token store or the OAuth answer "
                "is not on the configured host %s; it is not used (set rest_url if the "
                "portal really moved)",
                portal,
                _origin(offered),
                _origin(configured),
            )
        return configured

    async def _post(
        self, portal: str, method: str, content: bytes, tokens: TokenSet
    ) -> httpx.Response:
        """POST to the portal's endpoint, following a domain move (see the module)."""
        for _ in range(MAX_MOVES + 1):
            url = f"{self.endpoint(portal, tokens)}{method}"
            try:
                response = await self._http[portal].post(url, content=content, headers=_JSON)
            except httpx.HTTPError as exc:
                raise classify_transport(exc) from None
            if response.status_code not in MOVED:
                return response
            self._follow_move(portal, url, method, response)
        raise PermanentError(
            f"portal {portal!r} redirected {method} more than {MAX_MOVES} times; check its "
            "rest_url (IMCONNECTOR_PORTALS)",
            code="PORTAL_MOVED",
            http_status=response.status_code,
        )

    def _follow_move(self, portal: str, url: str, method: str, response: httpx.Response) -> None:
        location = response.headers.get("Location", "")
        endpoint = moved_endpoint(url, method, location) if location else None
        if endpoint is None:
            raise PermanentError(
                f"portal {portal!r} answered HTTP {response.status_code} to {method} with "
                f"Location {location[:200]!r}, which is not an https address ending in "
                f"/rest/{method}: if the portal moved, set its rest_url to the new address "
                "(IMCONNECTOR_PORTALS)",
                code="PORTAL_MOVED_INVALID",
                http_status=response.status_code,
            )
        if self.moved.get(portal) == endpoint:
            return
        self.moved[portal] = endpoint
        logger.warning(
            "portal %s moved (HTTP %d): calls now go to %s instead of %s; update its rest_url",
            portal,
            response.status_code,
            endpoint,
            url[: -len(method)],
        )
        if self._on_move is not None:
            self._on_move(portal)

    async def batch(self, portal: str, method: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        """Run `method` once per entry of `calls` in one REST `batch` request (halt=0).

        Sub-calls are keyed `c0`, `c1`, ... in order; see `classify.batch_results`. Only
        flat parameters (e.g. `chat.name.set`) are encoded here, and only ones that
        `batch_safe` passes: the caller sends the others directly.
        """
        cmd = {f"c{index}": f"{method}?{urlencode(params)}" for index, params in enumerate(calls)}
        return await self.call(portal, "batch", {"halt": 0, "cmd": cmd})
