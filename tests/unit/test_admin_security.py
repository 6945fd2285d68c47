"""The dashboard's security decisions (fluxgw.admin.security), on a fake clock."""

from __future__ import annotations

from fluxgw.admin.security import (
    LoginTokens,
    Sessions,
    allowed_hosts,
    cookie_value,
    csrf_ok,
    host_ok,
    origin_ok,
    session_cookie,
    token_hash,
    without_session_cookies,
)
from fluxgw.testing import FakeClock


def test_login_tokens_work_once_and_expire() -> None:
    clock = FakeClock(1_000_000.0)
    tokens = LoginTokens(clock)
    first = tokens.issue(ttl_s=60)
    assert tokens.redeem(first) is True
    assert tokens.redeem(first) is False  # one time only
    late = tokens.issue(ttl_s=60)
    clock.now += 60
    assert tokens.redeem(late) is False
    assert tokens.redeem("made-up") is False


def test_tokens_minted_by_the_cli_are_known_by_hash_only() -> None:
    clock = FakeClock(1_000_000.0)
    tokens = LoginTokens(clock)
    tokens.add(token_hash("from-cli"), clock.now + 10)
    assert tokens.redeem("from-cli") is True
    tokens.add(token_hash("from-cli"), clock.now + 10)  # the file is read again: still spent
    assert tokens.redeem("from-cli") is False


def test_sessions_expire() -> None:
    clock = FakeClock(1_000_000.0)
    sessions = Sessions(clock, ttl_s=100)
    cookie, session = sessions.create()
    assert session.id_hash != cookie and cookie not in session.id_hash
    assert sessions.get(cookie) == session
    clock.now += 99
    assert sessions.alive(session)
    clock.now += 1
    assert sessions.get(cookie) is None
    assert not sessions.alive(session)
    assert sessions.get(None) is None and sessions.get("nope") is None


def test_host_origin_and_csrf_checks() -> None:
    hosts = allowed_hosts("127.0.0.1", 4001)
    assert host_ok("127.0.0.1:4001", hosts) and host_ok("localhost:4001", hosts)
    assert not host_ok("evil.example", hosts)
    assert not host_ok("evil.example:4001", hosts)
    assert not host_ok("127.0.0.1:4000", hosts)
    assert not host_ok(None, hosts)
    assert origin_ok("http://127.0.0.1:4001", "127.0.0.1:4001")
    assert not origin_ok("http://127.0.0.1:5000", "127.0.0.1:4001")
    assert not origin_ok("null", "127.0.0.1:4001")
    assert not origin_ok(None, "127.0.0.1:4001")
    _, session = Sessions(FakeClock(1_000_000.0)).create()
    assert csrf_ok(session.csrf, session)
    assert not csrf_ok("x" + session.csrf[1:], session) and not csrf_ok(None, session)


def test_cookie() -> None:
    header = session_cookie("abc", 3600, "flux_dashboard_4001")
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Max-Age=3600" in header
    assert cookie_value("a=1; flux_dashboard_4001=abc; b=2", "flux_dashboard_4001") == "abc"
    assert cookie_value("flux_dashboard_4002=abc", "flux_dashboard_4001") is None


def test_the_session_cookie_never_reaches_a_function(tmp_path) -> None:
    from fluxgw.dispatch import build_invocation
    from fluxgw.project import FunctionSpec

    spec = FunctionSpec("f", "python", "/f", "GET", tmp_path, "main.py")

    def cookies(header: str) -> list[str]:
        invocation = build_invocation(
            request_id="r",
            method="GET",
            path="/f",
            headers={"host": "127.0.0.1:4000", "cookie": header},
            scope={},
            spec=spec,
            body=b"",
            now=1_000.0,
        )
        return [v for n, v in invocation.headers if n == "cookie"]

    assert cookies("theme=dark; flux_dashboard_4001=secret; lang=en") == ["theme=dark; lang=en"]
    assert cookies("flux_dashboard_4001=secret") == []
    assert cookies("theme=dark") == ["theme=dark"]
    assert without_session_cookies("flux_dashboard_5000=x;a=b") == "a=b"
