"""Tokens for development and tests: `flux jwt mint` and ``fluxgw.testing`` (HS256, with the
project's secret). Production tokens come from the identity provider, never from here."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jwt

from .config import TokenSettings

_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: Claims the command sets from its own flags; --claim may not override them.
OWN_CLAIMS = ("sub", "exp", "iat")


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds (> 0)."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"--ttl {text!r}: expected a duration like 90s, 15m, 1h or 7d")
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_claims(pairs: Iterable[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; a VALUE that is JSON (number, true, list, object) is that value,
    anything else is a string."""
    claims: dict[str, Any] = {}
    for pair in pairs:
        name, equals, raw = pair.partition("=")
        if not equals or not name:
            raise ValueError(f"--claim {pair!r}: expected NAME=VALUE")
        if name in OWN_CLAIMS:
            raise ValueError(f"--claim {name}: set by --sub/--ttl, not by --claim")
        try:
            claims[name] = json.loads(raw)
        except ValueError:
            claims[name] = raw
    return claims


def mint(
    secret: bytes,
    subject: str,
    *,
    ttl: float = 3600.0,
    claims: Mapping[str, Any] | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for ``subject`` valid ``ttl`` seconds, with the project's iss/aud."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {}
    if issuer:
        payload["iss"] = issuer
    if audience:
        payload["aud"] = audience
    payload.update(claims or {})
    payload.update({"sub": subject, "iat": issued, "exp": issued + round(ttl)})
    return jwt.encode(payload, secret, algorithm="HS256")


def mint_for(settings: TokenSettings, subject: str, **options: Any) -> str:
    """:func:`mint` with a project's settings (which must hold a secret)."""
    if settings.secret is None:
        raise ValueError(
            "this project verifies tokens with a key set (JWKS), whose private keys only the "
            "identity provider holds; minting needs a secret (--jwt-secret-stdin)"
        )
    return mint(
        settings.secret,
        subject,
        issuer=settings.issuer,
        audience=settings.audience,
        **options,
    )
