"""The dashboard: a small ASGI app on its own listener, next to the gateway (docs/dashboard.md).

Every request passes, in order: the ``Host`` allowlist (DNS rebinding), login (``/login``
only), the session cookie (nothing else is served without one, event stream included), and
for a state change the ``Origin`` and CSRF checks. Every answer carries the security headers
of :mod:`fluxgw.admin.security`. What it shows is read from the gateway's memory (metrics, the
request feed, worker pools) and from the same library calls the CLI makes.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
import orjson

from ..httpio import Receive, Send, answer_lifespan, decode_headers, read_body
from ..state import StateDir, fingerprint
from . import api, handoff
from .events import LiveTail, stream_events
from .security import (
    COOKIE,
    SECURITY_HEADERS,
    LoginTokens,
    Session,
    Sessions,
    allowed_hosts,
    clear_cookie,
    cookie_value,
    csrf_ok,
    host_ok,
    origin_ok,
    session_cookie,
)

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger("fluxgw.admin")

WATCH_INTERVAL = 0.2  # s between stat checks of the login handoff file
MAX_API_BODY = 64 * 1024
STATIC_FILES = ("index.html", "style.css", "app.js", "charts.js", "pages.js", "dom.js")
Headers = list[tuple[str, str]]


def _load_static() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files, read once from the package (no path ever comes from a URL)."""
    folder = resources.files("fluxgw.admin") / "static"
    out = {}
    for name in STATIC_FILES:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".js"):
            kind = "text/javascript"
        out[name] = ((folder / name).read_bytes(), f"{kind}; charset=utf-8")
    return out


class AdminApp:
    """``await app(scope, receive, send)``; ``await app.run()`` for its background work."""

    def __init__(
        self,
        gateway: Gateway,
        state: StateDir,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = gateway
        self.state = state
        self.clock = clock
        self.tokens = LoginTokens(clock)
        self.sessions = Sessions(clock)
        self.hosts: frozenset[str] = frozenset()
        self.cookie = COOKIE
        self.url = ""
        self.closing = anyio.Event()
        self.tail = LiveTail(gateway.feed, gateway.metrics.series)
        self._static = _load_static()

    def bind(self, host: str, port: int) -> str:
        """Called once the listener is up: what Host names it, and its URL."""
        self.hosts = allowed_hosts(host, port)
        self.cookie = f"{COOKIE}_{port}"  # cookies ignore ports: one name per listener
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        return self.url

    def login_url(self) -> str:
        return handoff.login_url(self.url, self.tokens.issue())

    # -- background ----------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The live tail, and a watch for the login tokens `flux dashboard` mints."""
        async with anyio.create_task_group() as group:
            await group.start(self.tail.run)
            task_status.started()
            await self._watch_logins()

    async def _watch_logins(self) -> None:
        path = self.state.root / handoff.LOGINS
        seen = fingerprint(path)
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            mark = fingerprint(path)
            if mark == seen:
                continue
            seen = mark
            try:
                for digest, expires_at in await anyio.to_thread.run_sync(
                    handoff.read_logins, self.state
                ):
                    self.tokens.add(digest, expires_at)
            except Exception as exc:  # a bad handoff file must not stop the dashboard
                log.warning("dashboard: could not read %s: %s", path, exc)

    def close(self) -> None:
        """End open event streams (the gateway is stopping)."""
        self.closing.set()

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._handle(scope, receive, send)
        except Exception:
            log.exception("dashboard: internal error on %s", scope.get("path"))
            await self._send(send, 500, _json({"error": "internal_error"}))

    async def _handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = decode_headers(scope["headers"])
        host = headers.get("host")
        if not host_ok(host, self.hosts):
            await self._send(send, 421, _text("This host name does not serve the dashboard.\n"))
            return
        assert host is not None
        method, path = scope["method"], scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/login" and method == "GET":
            await self._login(send, query.get("token", [""])[0])
            return
        session = self.sessions.get(cookie_value(headers.get("cookie"), self.cookie))
        if session is None:
            if path.startswith("/api/"):
                body = _json({"error": "unauthenticated", "message": "log in first"})
                await self._send(send, 401, body)
            else:
                await self._send(send, 401, _html(LOGIN_REQUIRED))
            return
        if method not in ("GET", "HEAD"):
            refusal = self._refuse_state_change(headers, host, session)
            if refusal:
                await self._send(send, 403, _json({"error": refusal[0], "message": refusal[1]}))
                return
        if path == "/" and method in ("GET", "HEAD"):
            await self._send(send, 200, self._file("index.html"))
        elif path.startswith("/static/") and method in ("GET", "HEAD"):
            name = path[len("/static/") :]
            if name in self._static:
                await self._send(send, 200, self._file(name))
            else:
                await self._send(send, 404, _text("not found\n"))
        elif path == "/api/events" and method == "GET":
            await stream_events(self, session, query, receive, send, SECURITY_HEADERS)
        elif path == "/api/logout" and method == "POST":
            self.sessions.end(session)
            body = _json({"ok": True})
            await self._send(send, 200, body, [("set-cookie", clear_cookie(self.cookie))])
        elif path.startswith("/api/"):
            payload = b""
            if method in ("POST", "PUT"):
                payload = await read_body(receive, headers.get("content-length"), MAX_API_BODY)
            status, data = await api.handle(self, session, method, path, query, payload)
            await self._send(send, status, _json(data))
        else:
            await self._send(send, 404, _text("not found\n"))

    def _refuse_state_change(
        self, headers: dict[str, str], host: str, session: Session
    ) -> tuple[str, str] | None:
        if not origin_ok(headers.get("origin"), host):
            return "bad_origin", "state changes are accepted from the dashboard's own pages only"
        if not csrf_ok(headers.get("x-csrf-token"), session):
            return "bad_csrf_token", "missing or wrong x-csrf-token"
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return "bad_content_type", "send application/json"
        return None

    async def _login(self, send: Send, token: str) -> None:
        if not token or not self.tokens.redeem(token):
            await self._send(send, 403, _html(LOGIN_REFUSED))
            return
        cookie, _session = self.sessions.create()
        headers = [
            ("location", "/"),
            ("set-cookie", session_cookie(cookie, self.sessions.ttl_s, self.cookie)),
        ]
        # 303 to a URL without the token: it leaves the address bar and the history.
        await self._send(send, 303, _text("logged in\n"), headers)

    def _file(self, name: str) -> tuple[bytes, str]:
        return self._static[name]

    async def _send(
        self, send: Send, status: int, body: tuple[bytes, str], extra: Headers | None = None
    ) -> None:
        content, kind = body
        headers = [
            (b"content-type", kind.encode()),
            (b"content-length", str(len(content)).encode()),
            *((n.encode(), v.encode()) for n, v in SECURITY_HEADERS),
            *((n.encode(), v.encode()) for n, v in extra or ()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _json(data: Any) -> tuple[bytes, str]:
    return orjson.dumps(data), "application/json"


def _text(text: str) -> tuple[bytes, str]:
    return text.encode(), "text/plain; charset=utf-8"


def _html(text: str) -> tuple[bytes, str]:
    return text.encode(), "text/html; charset=utf-8"


LOGIN_REQUIRED = """<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flux dashboard: log in</title>
<h1>Log in to the Flux dashboard</h1>
<p>Open the login URL the gateway printed when it started, or run
<code>flux dashboard</code> in the project folder for a fresh one.</p>
</html>
"""

LOGIN_REFUSED = """<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flux dashboard: login link refused</title>
<h1>This login link is not valid</h1>
<p>Login links work once and expire after 15 minutes. Run <code>flux dashboard</code> in the
project folder for a fresh one.</p>
</html>
"""
