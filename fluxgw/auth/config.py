"""A project's user-token settings: ``.flux/jwt.json`` (mode 0600, written under the lock).

One file, one owner: issuer, audience and exactly one key source, a JWKS URL, a key set copied
from a file at ``flux project update`` time, or an HS256 secret. A project has either a secret
or asymmetric keys, never both (setting one source replaces the other). The secret is stored
base64url-encoded (it may be any bytes) and is never printed: :meth:`TokenSettings.describe`
is what `flux project show` displays.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import urllib.parse
from pathlib import Path
from typing import Any

import attrs

from ..errors import FluxError, StateError
from ..state import StateDir
from .jwks import JwksError, parse_jwks

FILE_NAME = "jwt.json"
SOURCES = ("jwks_url", "jwks_file", "secret")
MIN_SECRET = 32  # bytes: RFC 7518 section 3.2 asks an HS256 key at least as long as the hash


@attrs.frozen
class TokenSettings:
    """Validated token settings; a value that exists is usable."""

    source: str  # one of SOURCES
    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = attrs.field(default=None, eq=False, repr=False)
    jwks_file: str | None = None  # where the copied key set came from (shown, never re-read)
    secret: bytes | None = attrs.field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source,
            "issuer": self.issuer,
            "audience": self.audience,
        }
        if self.source == "jwks_url":
            data["jwks_url"] = self.jwks_url
        elif self.source == "jwks_file":
            data["jwks"] = self.jwks
            data["jwks_file"] = self.jwks_file
        else:
            assert self.secret is not None
            data["secret"] = base64.urlsafe_b64encode(self.secret).decode("ascii")
        return data

    def describe(self) -> dict[str, Any]:
        """Everything `flux project show` may display: the settings minus the secret."""
        data: dict[str, Any] = {
            "issuer": self.issuer,
            "audience": self.audience,
            "key_source": self.source,
        }
        if self.source == "jwks_url":
            data["jwks_url"] = self.jwks_url
            data["algorithms"] = "from the key set (RS256, PS256, ES256, EdDSA)"
        elif self.source == "jwks_file":
            keys, _ = parse_jwks(self.jwks)
            data["jwks_file"] = self.jwks_file
            data["kids"] = sorted(keys)
            data["algorithms"] = sorted({k.algorithm_name for k in keys.values()})
        else:
            data["algorithms"] = ["HS256"]
        return data


def settings_path(state: StateDir) -> Path:
    return state.root / FILE_NAME


def check_jwks_url(url: str) -> str:
    """An https URL, or http on a loopback host (a local identity provider, tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(
            f"{url!r}: keys must come over https (plain http only from a loopback host)"
        )
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks(data: Any) -> dict[str, Any]:
    """A key set fit to be copied into the project: at least one usable key, no private key."""
    try:
        keys, skipped = parse_jwks(data)
    except JwksError as exc:
        raise ValueError(str(exc)) from None
    private = [note for note in skipped if "private key material" in note]
    if private:
        raise ValueError(f"{private[0]}: give the public keys only")
    if not keys:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise ValueError(f"no usable signing key{detail}")
    return data


def check_secret(secret: bytes) -> bytes:
    if secret.lstrip().startswith((b"-----BEGIN", b"ssh-", b"{")):
        # PyJWT would refuse it on every token; and a public key is not a shared secret
        raise ValueError("this looks like a key, not a shared secret: use --jwt-jwks-file")
    if len(secret) < MIN_SECRET:
        raise ValueError(
            f"the secret is {len(secret)} bytes; HS256 needs at least {MIN_SECRET} "
            "(e.g. openssl rand -base64 48)"
        )
    return secret


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"'{name}' must be a non-empty string or null")
    return value


def from_json(data: Any) -> TokenSettings:
    """Rebuild settings from the file's JSON; ValueError names what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    source = data.get("source")
    if source not in SOURCES:
        raise ValueError(f"'source' must be one of {', '.join(SOURCES)}")
    issuer, audience = _text(data, "issuer"), _text(data, "audience")
    if source == "jwks_url":
        url = _text(data, "jwks_url")
        if url is None:
            raise ValueError("'jwks_url' is missing")
        return TokenSettings(source, issuer, audience, jwks_url=check_jwks_url(url))
    if source == "jwks_file":
        return TokenSettings(
            source,
            issuer,
            audience,
            jwks=check_jwks(data.get("jwks")),
            jwks_file=_text(data, "jwks_file"),
        )
    encoded = data.get("secret")
    if not isinstance(encoded, str):
        raise ValueError("'secret' is missing")
    try:
        secret = base64.urlsafe_b64decode(encoded.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("'secret' is not base64url") from None
    return TokenSettings(source, issuer, audience, secret=check_secret(secret))


def load_token_settings(state: StateDir) -> TokenSettings | None:
    """The project's token settings, ``None`` if it has none. StateError if the file is bad."""
    path = settings_path(state)
    data = state.read_json(path)
    if data is None:
        return None
    try:
        return from_json(data)
    except ValueError as exc:
        raise StateError(
            str(path), f"is not valid token settings ({exc}); left untouched"
        ) from None


_UNSET: Any = object()


def update_token_settings(
    state: StateDir,
    *,
    issuer: str | None = _UNSET,
    audience: str | None = _UNSET,
    jwks_url: str | None = None,
    jwks_file: Path | None = None,
    secret: bytes | None = None,
    clear: bool = False,
) -> TokenSettings | None:
    """Apply `flux project update --jwt-*`: validate everything first, then one atomic write
    under the lock. ``issuer``/``audience`` of ``""`` or ``None`` unset the check."""
    if clear:
        with state.lock():
            path = settings_path(state)
            if path.exists():
                path.unlink()
        return None
    sources = [s for s in (jwks_url, jwks_file, secret) if s is not None]
    if len(sources) > 1:
        raise FluxError(
            "give one key source: --jwt-jwks-url, --jwt-jwks-file or --jwt-secret-stdin"
        )
    new: dict[str, Any] = {}
    flag = (
        "--jwt-jwks-url" if jwks_url else "--jwt-jwks-file" if jwks_file else "--jwt-secret-stdin"
    )
    try:
        if jwks_url is not None:
            new = {"source": "jwks_url", "jwks_url": check_jwks_url(jwks_url)}
        elif jwks_file is not None:
            new = {
                "source": "jwks_file",
                "jwks": check_jwks(_read_json_file(jwks_file)),
                "jwks_file": str(jwks_file.resolve()),
            }
        elif secret is not None:
            new = {"source": "secret", "secret": check_secret(secret)}
    except ValueError as exc:
        raise FluxError(f"{flag}: {exc}") from None
    with state.lock():
        current = load_token_settings(state)
        if current is None and not new:
            raise FluxError(
                "user tokens need a key source: --jwt-jwks-url URL, --jwt-jwks-file FILE "
                "or --jwt-secret-stdin"
            )
        fields = attrs.asdict(current, recurse=False) if current is not None else {}
        if new:  # a new source replaces the old one entirely: never a secret and keys both
            for name in ("jwks_url", "jwks", "jwks_file", "secret"):
                fields[name] = None
            fields.update(new)
        if issuer is not _UNSET:
            fields["issuer"] = issuer or None
        if audience is not _UNSET:
            fields["audience"] = audience or None
        updated = TokenSettings(**fields)
        state.write_json(settings_path(state), updated.to_json())
    return updated


def _read_json_file(path: Path) -> Any:
    import json

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from None
