"""The dashboard's security decisions, pure (an injected clock, no I/O): docs/dashboard.md.

- Login tokens: random, one-time, short-lived; only their SHA-256 is kept (in memory, and in
  ``.flux/dashboard-logins.json`` for tokens minted by ``flux dashboard``).
- Sessions: a random cookie value (only its hash is kept), a CSRF token, an absolute expiry.
  They live in the gateway's memory, so a restart ends them all.
- Requests: the ``Host`` must name the listener (DNS rebinding), a state change needs the
  listener's own ``Origin`` and the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable

import attrs

LOGIN_TTL_S = 15 * 60.0  # a login URL works once, within 15 minutes
SESSION_TTL_S = 12 * 3600.0  # a session lasts 12 hours from login, then log in again
MAX_SESSIONS = 64  # oldest dropped past this: a leaked token cannot grow memory forever
COOKIE = "flux_dashboard"

# Every answer of the admin listener carries these (docs/dashboard.md#headers).
SECURITY_HEADERS: list[tuple[str, str]] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cache-control", "no-store"),
]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


class LoginTokens:
    """One-time login tokens by hash, each with its expiry (epoch seconds)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pending: dict[str, float] = {}
        self._used: set[str] = set()

    def issue(self, ttl_s: float = LOGIN_TTL_S) -> str:
        token = new_token()
        self.add(token_hash(token), self._clock() + ttl_s)
        return token

    def add(self, digest: str, expires_at: float) -> None:
        """Accept a token known by its hash (minted by `flux dashboard`); once only."""
        if digest not in self._used:
            self._pending[digest] = expires_at

    def redeem(self, token: str) -> bool:
        """True once for a known, unexpired token; it is spent either way."""
        digest = token_hash(token)
        expires_at = self._pending.pop(digest, None)
        if expires_at is None:
            return False
        self._used.add(digest)
        return self._clock() < expires_at


@attrs.frozen
class Session:
    id_hash: str
    csrf: str
    created_at: float
    expires_at: float


class Sessions:
    """Logged-in browsers, in memory only."""

    def __init__(
        self, clock: Callable[[], float] = time.time, ttl_s: float = SESSION_TTL_S
    ) -> None:
        self._clock = clock
        self.ttl_s = ttl_s
        self._by_hash: dict[str, Session] = {}

    def create(self) -> tuple[str, Session]:
        """A new session: the cookie value (given to the browser only) and its record."""
        cookie = new_token()
        now = self._clock()
        session = Session(token_hash(cookie), new_token(), now, now + self.ttl_s)
        self._by_hash[session.id_hash] = session
        while len(self._by_hash) > MAX_SESSIONS:
            del self._by_hash[next(iter(self._by_hash))]
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        session = self._by_hash.get(token_hash(cookie))
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            del self._by_hash[session.id_hash]
            return None
        return session

    def alive(self, session: Session) -> bool:
        return session.id_hash in self._by_hash and self._clock() < session.expires_at

    def end(self, session: Session) -> None:
        self._by_hash.pop(session.id_hash, None)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` values that name this listener: its address and the loopback names."""
    names = {host}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{name}:{port}" for name in names)


def host_ok(host: str | None, allowed: Iterable[str]) -> bool:
    return host is not None and host.lower() in allowed


def origin_ok(origin: str | None, host: str) -> bool:
    """A state change must come from a page of this very listener (scheme, host, port)."""
    return origin is not None and hmac.compare_digest(origin.lower(), f"http://{host.lower()}")


def csrf_ok(sent: str | None, session: Session) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())


def cookie_value(cookie_header: str | None, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def without_session_cookies(cookie_header: str) -> str:
    """A ``Cookie`` header without the dashboard's session cookies. Cookies ignore ports, so
    a browser sends them to the gateway's port too: they must never reach a function (its
    code could replay them against the dashboard)."""
    return "; ".join(
        part
        for part in (p.strip() for p in cookie_header.split(";"))
        if part and not part.startswith(COOKIE + "_")
    )


def session_cookie(value: str, ttl_s: float, name: str = COOKIE) -> str:
    return f"{name}={value}; Path=/; Max-Age={int(ttl_s)}; HttpOnly; SameSite=Strict"


def clear_cookie(name: str = COOKIE) -> str:
    return f"{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
