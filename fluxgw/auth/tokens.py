"""The token half of "who is calling": a bearer token in, a :class:`Principal` out.

One :class:`TokenVerifier` per token settings; the live state keeps it across reloads of other
files, so a fetched key set is not thrown away when, say, a key is created.
"""

from __future__ import annotations

from collections.abc import Callable

import jwt

from .config import TokenSettings
from .jwks import Fetch, JwksCache, JwksError, http_fetch, parse_jwks, select_key
from .jwt_verify import ClaimRules, TokenError, read_header, verify
from .principal import JWT, Principal, token_bucket


class KeysUnavailable(Exception):
    """The key set could not be fetched and none is held: the token cannot be judged."""


class TokenVerifier:
    """Verifies tokens with the project's secret, copied key set, or fetched key set."""

    def __init__(
        self,
        settings: TokenSettings,
        clock: Callable[[], float],
        fetch: Fetch = http_fetch,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rules = ClaimRules(issuer=settings.issuer, audience=settings.audience)
        self.cache: JwksCache | None = None
        self._static: dict[str, jwt.PyJWK] = {}
        if settings.source == "jwks_url":
            assert settings.jwks_url is not None
            self.cache = JwksCache(settings.jwks_url, clock, fetch)
        elif settings.source == "jwks_file":
            self._static, _ = parse_jwks(settings.jwks)

    async def verify(self, token: str) -> Principal:
        """The caller a valid token names; :class:`TokenError` (401) or
        :class:`KeysUnavailable` otherwise."""
        header = read_header(token)
        kid = header.get("kid")
        key: jwt.PyJWK | bytes | None
        if self.settings.secret is not None:
            key = self.settings.secret
        elif self.cache is not None:
            try:
                key = await self.cache.key_for(kid)
            except JwksError as exc:
                raise KeysUnavailable(str(exc)) from None
        else:
            key = select_key(self._static, kid)
        if key is None:
            raise TokenError(
                "the token's signing key is not in the project's key set"
                if kid is not None
                else "the token names no key ('kid') and the key set holds several"
            )
        claims = verify(token, key, self.rules, self.clock())
        subject, issuer = claims["sub"], claims.get("iss", "")
        return Principal(
            kind=JWT,
            name=subject,
            bucket=token_bucket(issuer, subject),
            issuer=issuer,
            kid=kid,
            claims=claims,
        )
