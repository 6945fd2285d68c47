"""Verify one user token against one key: PyJWT does the signature and the claims, we add the
rules it leaves to its caller (docs/auth.md, "Verification").

* The algorithm comes from the key, never from the token: HS256 for the project's secret, the
  JWK's own algorithm for a key set. PyJWT refuses a token whose ``alg`` differs, so ``none``
  and HS/RS confusion (an HS256 token "signed" with the RSA public key) fail there.
* Header fields that would let the token pick its own key (``jku``, ``x5u``, ``jwk``, ``x5c``)
  and any ``crit`` extension (we implement none) are refused before the signature is checked.
* A token over 8 KiB is refused before it is parsed at all.
* ``exp`` is required, ``nbf`` and ``iat`` honoured, with 60 s leeway, against the injected
  clock: PyJWT reads the system clock itself, so its time checks are turned off and done here
  (the one part of the claims check we own; everything else runs inside ``jwt.decode``).

Nothing here does I/O. Messages never quote the token or its claims back.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import attrs
import jwt

MAX_TOKEN = 8 * 1024  # bytes; a bearer value longer than this is refused unparsed
LEEWAY = 60.0  # seconds of clock skew tolerated on exp, nbf and iat
SECRET_ALGORITHM = "HS256"
#: Algorithms a key set may publish keys for (RSA, RSA-PSS, P-256 ECDSA, Ed25519).
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
#: Header fields that name or carry a key: the token would choose what verifies it.
KEY_CHOOSING_HEADERS = ("jku", "x5u", "jwk", "x5c")


class TokenError(Exception):
    """A token refused: ``code`` is ``invalid_token`` or ``token_expired``."""

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class ClaimRules:
    """What the project requires of a token's claims (``None``: not checked)."""

    issuer: str | None = None
    audience: str | None = None
    leeway: float = LEEWAY


def read_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, after the checks that need no key: size, shape, ``alg``,
    key-choosing fields, ``crit``. Raises :class:`TokenError`."""
    if len(token) > MAX_TOKEN:
        raise TokenError(f"the token is larger than {MAX_TOKEN // 1024} KiB")
    head, dot, _rest = token.partition(".")
    if not dot or token.count(".") != 2:
        raise TokenError("the token is not a JWT (expected three dot-separated parts)")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        raise TokenError("the token's header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise TokenError("the token's header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg or alg.lower() == "none":
        raise TokenError("the token is not signed (alg is missing or 'none')")
    for field in KEY_CHOOSING_HEADERS:
        if field in header:
            raise TokenError(f"the token's header names its own key ('{field}'): refused")
    if "crit" in header:
        raise TokenError("the token's header has critical extensions ('crit') not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("the token's 'kid' header is not a string")
    return header


def verify(
    token: str,
    key: jwt.PyJWK | bytes,
    rules: ClaimRules,
    now: float,
) -> dict[str, Any]:
    """The verified claims of ``token`` (already passed through :func:`read_header`).

    ``key`` is a JWK from the project's key set (its algorithm is the only one accepted) or
    the project's HS256 secret.
    """
    algorithm = key.algorithm_name if isinstance(key, jwt.PyJWK) else SECRET_ALGORITHM
    options: dict[str, Any] = {
        "require": ["exp", "sub"],
        "verify_exp": False,  # time checks: below, against the injected clock
        "verify_nbf": False,
        "verify_iat": False,
        "verify_iss": rules.issuer is not None,
        "verify_aud": rules.audience is not None,
    }
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            options=options,  # type: ignore[arg-type]
            issuer=rules.issuer,
            audience=rules.audience,
        )
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"the token has no '{exc.claim}' claim") from None
    except jwt.InvalidIssuerError:
        raise TokenError("the token was issued by another issuer than the project's") from None
    except jwt.InvalidAudienceError:
        raise TokenError("the token is meant for another audience than the project's") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError(f"the token's algorithm is not the key's ({algorithm})") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature does not verify") from None
    except jwt.DecodeError:
        raise TokenError("the token is malformed") from None
    except jwt.PyJWTError:
        raise TokenError("the token is invalid") from None
    check_times(claims, now, rules.leeway)
    subject, issuer = claims.get("sub"), claims.get("iss", "")
    if not isinstance(subject, str) or not subject:
        raise TokenError("the token's 'sub' claim is not a non-empty string")
    if not isinstance(issuer, str):
        raise TokenError("the token's 'iss' claim is not a string")
    return claims


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise TokenError(f"the token's '{name}' claim is not a number of seconds")
    return float(value)


def check_times(claims: dict[str, Any], now: float, leeway: float = LEEWAY) -> None:
    """``exp`` (required), ``nbf`` and ``iat`` against ``now``, each with ``leeway``."""
    expires = _number(claims, "exp")
    if expires is None:
        raise TokenError("the token has no 'exp' claim")
    if expires <= now - leeway:
        raise TokenError("the token has expired", code="token_expired")
    not_before = _number(claims, "nbf")
    if not_before is not None and not_before > now + leeway:
        raise TokenError("the token is not valid yet ('nbf' is in the future)")
    issued = _number(claims, "iat")
    if issued is not None and issued > now + leeway:
        raise TokenError("the token was issued in the future ('iat')")
