"""The pipeline's authenticate step and the per-function credential check (docs/auth.md).

``authenticate`` turns an ``Authorization`` header into a :class:`Principal` or raises the
:class:`HttpError` to answer. A bearer value starting with ``flx_`` is an API key; anything
else is a user token, when the project has token settings (without them every value is judged
as a key, so a project that never set up tokens answers exactly as before).
"""

from __future__ import annotations

from ..errors import HttpError
from ..keys import KeyStore
from .jwt_verify import TokenError
from .principal import JWT, KEY, KIND_LABEL, Principal
from .tokens import KeysUnavailable, TokenVerifier

KEY_PREFIX = "flx_"


def bearer_token(header: str | None) -> str | None:
    """The value after ``Bearer`` (RFC 6750 section 2.1), or None for anything else."""
    if not header:
        return None
    scheme, _, value = header.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.lstrip(" ") or None


def challenge(description: str) -> tuple[str, str]:
    """RFC 6750 ``WWW-Authenticate`` for a refused token. The description is our own text,
    reduced to the characters the RFC allows in it (no quote, no backslash, ASCII)."""
    safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in description)
    return ("www-authenticate", f'Bearer error="invalid_token", error_description="{safe}"')


async def authenticate(
    keys: KeyStore, tokens: TokenVerifier | None, header: str | None
) -> Principal:
    """Who is calling, or the 401/403/503 to answer."""
    token = bearer_token(header)
    if tokens is not None and token is not None and not token.startswith(KEY_PREFIX):
        try:
            return await tokens.verify(token)
        except TokenError as exc:
            raise HttpError(401, exc.code, exc.message, [challenge(exc.message)]) from None
        except KeysUnavailable as exc:
            raise HttpError(
                503,
                "token_keys_unavailable",
                f"cannot verify user tokens right now: {exc}",
                [("retry-after", "5")],
            ) from None
    outcome = keys.authenticate(header)
    if not outcome.ok:
        extra = [("www-authenticate", "Bearer")] if outcome.status == 401 else []
        raise HttpError(outcome.status, outcome.code, outcome.message, extra)
    record = outcome.record
    assert record is not None
    return Principal(
        kind=KEY,
        name=record.name,
        bucket=record.key_hash,
        scope=record.functions,
        key_hash=record.key_hash,
        record=record,
    )


def check_credential(principal: Principal, what: str, accepted: tuple[str, ...]) -> None:
    """Refuse (401) a credential of a kind ``what`` (a function, an endpoint) does not take."""
    if principal.kind in accepted:
        return
    given = "a user token" if principal.kind == JWT else "an API key"
    takes = " or ".join(KIND_LABEL[kind] for kind in accepted)
    message = f"{what} takes {takes}, not {given}"
    raise HttpError(401, "wrong_credential", message, [challenge(message)])


def check_scope(principal: Principal, function: str) -> None:
    """Refuse (403) a key scoped to other functions; tokens carry no function scope."""
    if principal.scope and function not in principal.scope:
        raise HttpError(
            403,
            "key_not_for_function",
            f"API key {principal.name!r} is not allowed to call function {function!r}",
        )
