"""The OAuth side of a portal: token issue, refresh with rotation, expiry (reference §7)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from consumer.simulator.errors import (
    EXPIRED_TOKEN,
    INVALID_CLIENT,
    INVALID_GRANT,
    INVALID_REQUEST,
    INVALID_TOKEN,
    NO_AUTH_FOUND,
)

REFRESH_TOKEN_TTL = 180 * 24 * 3600.0
"""Current docs: refresh tokens live 180 days (legacy docs said 28)."""

TokenState = Literal["active", "rotated"]


class OAuthError(Exception):
    """A token-endpoint failure, answered as `{"error", "error_description"}` with `status`."""

    def __init__(self, code: str, description: str, status: int) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status


@dataclass
class _AccessToken:
    expires_at: float
    refresh_token: str
    state: TokenState = "active"


@dataclass
class _RefreshToken:
    expires_at: float
    state: TokenState = "active"


@dataclass(frozen=True)
class OAuthIdentity:
    """What the token response says about the app install besides the tokens."""

    client_id: str
    client_secret: str
    member_id: str
    user_id: int
    scope: str = "imopenlines,imconnector"
    status: str = "L"
    domain: str = "oauth.bitrix.info"


class TokenStore:
    """Every token pair the portal ever issued. Not thread-safe: the portal lock guards it.

    Rotation follows the legacy docs: a refresh invalidates the spent refresh token
    and the access token issued together with it (later use → `invalid_token`).
    """

    def __init__(self, identity: OAuthIdentity, access_token_ttl: float) -> None:
        self.identity = identity
        self.access_token_ttl = access_token_ttl
        self._access: dict[str, _AccessToken] = {}
        self._refresh: dict[str, _RefreshToken] = {}

    def issue(self, now: float, client_endpoint: str) -> dict[str, Any]:
        """Mint a fresh pair as an app install would; the token-endpoint JSON shape."""
        access, refresh = secrets.token_hex(35), secrets.token_hex(35)
        expires_at = now + self.access_token_ttl
        self._access[access] = _AccessToken(expires_at=expires_at, refresh_token=refresh)
        self._refresh[refresh] = _RefreshToken(expires_at=now + REFRESH_TOKEN_TTL)
        ident = self.identity
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires": int(expires_at),
            "expires_in": int(self.access_token_ttl),
            "scope": ident.scope,
            "domain": ident.domain,
            "server_endpoint": f"https://{ident.domain}/rest/",
            "client_endpoint": client_endpoint,
            "member_id": ident.member_id,
            "status": ident.status,
            "user_id": ident.user_id,
        }

    def refresh(self, params: dict[str, str], now: float, client_endpoint: str) -> dict[str, Any]:
        """`grant_type=refresh_token`: check everything, spend the old pair, issue a new one."""
        required = ("grant_type", "client_id", "client_secret", "refresh_token")
        missing = [name for name in required if not params.get(name)]
        if missing:
            raise OAuthError(INVALID_REQUEST, f"Missing parameter: {', '.join(missing)}", 400)
        if params["grant_type"] != "refresh_token":
            raise OAuthError(INVALID_REQUEST, "Unsupported grant_type", 400)
        ident = self.identity
        if params["client_id"] != ident.client_id or not secrets.compare_digest(
            params["client_secret"], ident.client_secret
        ):
            raise OAuthError(INVALID_CLIENT, "Invalid client credentials", 401)
        old = self._refresh.get(params["refresh_token"])
        if old is None or old.state != "active" or old.expires_at <= now:
            raise OAuthError(INVALID_GRANT, "Invalid refresh token", 400)
        old.state = "rotated"
        for token in self._access.values():
            if token.refresh_token == params["refresh_token"]:
                token.state = "rotated"
        return self.issue(now, client_endpoint)

    def check(self, access_token: str, now: float) -> str | None:
        """None when the token may call REST, else the error code of the 401."""
        token = self._access.get(access_token) if access_token else None
        if token is None:
            return NO_AUTH_FOUND
        if token.state == "rotated":
            return INVALID_TOKEN
        if token.expires_at <= now:
            return EXPIRED_TOKEN
        return None

    def expire(self, access_token: str, now: float) -> None:
        token = self._access.get(access_token)
        if token is not None:
            token.expires_at = min(token.expires_at, now)

    def expire_all(self, now: float) -> int:
        """Expire every live access token; returns how many were live."""
        count = 0
        for token in self._access.values():
            if token.state == "active" and token.expires_at > now:
                token.expires_at = now
                count += 1
        return count
