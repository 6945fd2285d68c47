"""CORS decisions (docs/reference.md#cors), pure: headers in, headers and a short trace text out.

Policy:

* ``GET`` / ``HEAD`` are allowed from any origin (they are meant to be readable by any page;
  the API is protected by bearer keys, not by cookies, so CORS is not what keeps it safe).
* ``POST`` / ``PUT`` / ``PATCH`` / ``DELETE`` (and anything else) are allowed from any origin
  while the project has no allowlist, and only from the allowlist once one is set.
* ``Origin: null`` (sandboxed iframes, ``file://`` pages) is never in the allowlist:
  :func:`normalize_origin` refuses to store it, because every opaque origin sends the same
  value.
* An allowed origin is echoed back, never ``*``: ``*`` cannot be combined with credentials, and
  echoing keeps one code path for both. A disallowed origin gets no
  ``Access-Control-Allow-Origin`` at all, which is how the browser learns the answer.
* ``Vary: Origin`` is on *every* response, with or without an ``Origin`` request header and
  whether or not it was allowed: the answer depends on the Origin, so a shared cache must never
  serve the response for one origin (or for no origin) to another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

EXPOSE_HEADERS = "x-request-id, Retry-After, RateLimit, RateLimit-Policy, WWW-Authenticate"
BASE_ALLOW_HEADERS = ("authorization", "content-type")
MAX_AGE = "600"  # seconds; browsers cap it anyway (Chromium: 7200), short enough for policy edits
SAFE_METHODS = frozenset({"GET", "HEAD"})
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
# RFC 9110 token: what a header name or a method may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_REQUESTED_HEADERS = 64  # reflect at most this many names: a preflight is unauthenticated


def normalize_origin(url: str) -> str:
    """``scheme://host[:port]`` as a browser sends it in ``Origin``: lower-case, IDN as
    punycode, default port dropped, no path. Raises ValueError saying what is wrong.

    Used by ``flux project update --cors-origin URL`` so that an allowlist entry compares
    equal, byte for byte, to the header a browser sends.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("CORS origin must be a URL like https://app.example.com")
    text = url.strip()
    if text == "*" or "*" in text:
        raise ValueError(
            "CORS origin wildcards are not supported: list each origin (an empty allowlist "
            "already allows every origin)"
        )
    if text.lower() == "null":
        raise ValueError("CORS origin 'null' cannot be allowlisted: every opaque origin sends it")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"CORS origin {text!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"CORS origin {text!r} must not contain a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            f"CORS origin {text!r} must be scheme://host[:port] only (no path, query or fragment)"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"CORS origin {text!r} has an invalid port") from None
    host = parts.hostname  # lower-cased by urlsplit, brackets of IPv6 removed
    if not host:
        raise ValueError(f"CORS origin {text!r} has no host")
    if ":" in host:
        host = f"[{host}]"
    else:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"CORS origin {text!r} has an invalid host name") from None
        if not re.fullmatch(r"[a-z0-9.-]+", host) or ".." in host:
            raise ValueError(f"CORS origin {text!r} has an invalid host name")
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        if port == 0:
            raise ValueError(f"CORS origin {text!r} has an invalid port")
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def _to_origins(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("allowed_origins must be a list of origins, not a string")
    # Normalised and de-duplicated, first occurrence kept, so equality means what it says.
    return tuple(dict.fromkeys(normalize_origin(o) for o in value))


@attrs.frozen
class CorsPolicy:
    """A project's CORS settings: the origin allowlist (empty = no allowlist: any origin)."""

    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=_to_origins)
    _allowed: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_allowed", frozenset(self.allowed_origins))

    def allows(self, origin: str, method: str) -> bool:
        """Whether a page at ``origin`` may read the response to ``method``."""
        if method in SAFE_METHODS or not self._allowed:
            return True
        return origin in self._allowed


def _header(headers: Any, name: str) -> str | None:
    """A request header by lower-case name from a mapping with lower-case keys, or from ASGI
    style ``(name, value)`` pairs of bytes or str."""
    if isinstance(headers, Mapping):
        value = headers.get(name)
        return value.decode("latin-1") if isinstance(value, bytes) else value
    wanted = name.encode("latin-1")
    for key, value in headers:
        if isinstance(key, bytes):
            if key.lower() == wanted:
                return value.decode("latin-1")
        elif key.lower() == name:
            return value
    return None


def is_preflight(method: str, headers: Any) -> bool:
    """A CORS preflight: ``OPTIONS`` with both ``Origin`` and ``Access-Control-Request-Method``.

    A bare ``OPTIONS`` is not a preflight and goes down the normal pipeline (and 404s).
    """
    return (
        method == "OPTIONS"
        and _header(headers, "origin") is not None
        and _header(headers, "access-control-request-method") is not None
    )


def _allow_headers(requested: str | None) -> tuple[str, list[str]]:
    """Base headers plus the requested ones (lower-cased, de-duplicated); also the names that
    were refused as not being header-name tokens."""
    names = dict.fromkeys(BASE_ALLOW_HEADERS)
    bad: list[str] = []
    if requested:
        for raw in requested.split(",")[:_MAX_REQUESTED_HEADERS]:
            name = raw.strip()
            if not name:
                continue
            if _TOKEN.fullmatch(name):
                names.setdefault(name.lower())
            else:
                bad.append(name[:40])
    return ", ".join(names), bad


def _shown(origin: str) -> str:
    # The Origin header is attacker-controlled: keep trace text short.
    return origin if len(origin) <= 100 else origin[:100] + "..."


def preflight_headers(
    policy: CorsPolicy,
    origin: str,
    requested_method: str,
    requested_headers: str | None,
    route_methods: Iterable[str] | None,
) -> tuple[list[tuple[str, str]], str]:
    """Headers for the gateway's own ``204`` answer to a preflight, and a decision text.

    ``route_methods`` are the methods served at the path (``RouteTable.methods_for``), or None
    when unknown; a method not served there is not granted (the real request would 404).
    ``Access-Control-Allow-Origin`` is present only when the preflight is granted; the other
    fields are always sent (harmless, and they help someone debugging with curl).
    """
    method = requested_method.strip()
    served = tuple(route_methods) if route_methods is not None else ALL_METHODS
    allow_methods = [m for m in served if policy.allows(origin, m)]
    allow_headers, bad_headers = _allow_headers(requested_headers)
    headers: list[tuple[str, str]] = []
    if not _TOKEN.fullmatch(method):
        decision = "preflight refused: invalid Access-Control-Request-Method"
    elif route_methods is not None and method not in served:
        shown = ", ".join(served) or "nothing"
        decision = f"preflight refused: {method} is not served at this path (serves {shown})"
    elif not policy.allows(origin, method):
        decision = f"preflight refused: {method} from {_shown(origin)} is not in the allowlist"
    elif bad_headers:
        decision = f"preflight refused: invalid header name(s) requested: {', '.join(bad_headers)}"
    else:
        headers.append(("Access-Control-Allow-Origin", origin))
        decision = f"preflight allowed: {method} from {_shown(origin)}"
    if allow_methods:
        headers.append(("Access-Control-Allow-Methods", ", ".join(allow_methods)))
    headers.append(("Access-Control-Allow-Headers", allow_headers))
    headers.append(("Access-Control-Max-Age", MAX_AGE))
    headers.append(("Vary", PREFLIGHT_VARY))
    return headers, decision


# Built once: most responses take one of these three paths.
_VARY_ONLY = ("Vary", "Origin")
_EXPOSE = ("Access-Control-Expose-Headers", EXPOSE_HEADERS)


def response_headers(
    policy: CorsPolicy, origin: str | None, method: str
) -> tuple[list[tuple[str, str]], str]:
    """CORS headers for every non-preflight response (errors included), and a decision text.

    Always includes ``Vary: Origin`` (see the module docstring); callers merge it with the
    function's own ``Vary`` through :func:`merge_vary`.
    """
    if origin is None:
        return [_VARY_ONLY], "no Origin header"
    if policy.allows(origin, method):
        return (
            [("Access-Control-Allow-Origin", origin), _EXPOSE, _VARY_ONLY],
            f"origin {_shown(origin)} allowed for {method}",
        )
    return [_VARY_ONLY], f"origin {_shown(origin)} not in the allowlist for {method}"


def merge_vary(headers: list[tuple[str, str]], extra: Iterable[str]) -> list[tuple[str, str]]:
    """``headers`` with all their ``Vary`` fields and ``extra`` merged into one ``Vary``.

    The function's own values come first and keep their spelling; duplicates are dropped
    case-insensitively; ``*`` (varies on everything) absorbs every other value. The merged
    field takes the place of the first ``Vary`` (or goes last). Returns a new list.
    """
    values: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    position = -1
    for name, value in headers:
        if name.lower() == "vary":
            if position < 0:
                position = len(out)
            for item in value.split(","):
                item = item.strip()
                if item:
                    values.setdefault(item.lower(), item)
        else:
            out.append((name, value))
    for value in extra:
        for item in value.split(","):
            item = item.strip()
            if item:
                values.setdefault(item.lower(), item)
    if not values:
        return out
    merged = "*" if "*" in values else ", ".join(values.values())
    if position < 0:
        position = len(out)
    out.insert(position, ("Vary", merged))
    return out
