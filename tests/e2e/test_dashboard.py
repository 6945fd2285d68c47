"""The dashboard (docs/dashboard.md), end to end: the real `flux serve`, its admin listener,
Debian's Chromium driven by Playwright (no browser download), httpx for the calls.

Screenshots of every page at laptop and phone size land in test-output/dashboard/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    PageServer,
    RunningGateway,
    bearer,
    flux,
    poll_until,
    serve,
    write_function,
)
from redisserver import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="chromium not installed (scripts/setup --test installs it)",
    ),
]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
LOGIN = re.compile(r"Dashboard: (http://\S+/login\?token=\S+)")
SIZES = {"laptop": (1280, 800), "phone": (390, 844)}
ECHO = "def handler(request, ctx):\n    print('echo says hello')\n    return {'ok': True}\n"
OTHER = "def handler(request, ctx):\n    return {'other': True}\n"


def login_url(gateway: RunningGateway, timeout: float = 10) -> str:
    """The login URL from the gateway's startup lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(gateway.output):
            match = LOGIN.search(line)
            if match:
                return match.group(1)
        time.sleep(0.05)
    raise AssertionError("no dashboard line in:\n" + "".join(gateway.output))


def origin_of(url: str) -> str:
    return re.match(r"http://[^/]+", url).group(0)  # type: ignore[union-attr]


@pytest.fixture
def shop(project: Path) -> Path:
    write_function(project, "echo", ECHO, route="/echo", method="GET")
    write_function(project, "other", OTHER, route="/other", method="GET")
    write_function(project, "later", OTHER, route="/later", **{"async": True})
    flux(project, "deploy")
    return project


@pytest.fixture
def gateway(shop: Path) -> Iterator[RunningGateway]:
    with serve(shop) as gw:
        yield gw


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.timing
def test_dashboard_in_a_browser(shop: Path, gateway: RunningGateway, browser) -> None:
    from playwright.sync_api import expect

    url = login_url(gateway)
    base = origin_of(url)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    # Log in through the printed URL: the token leaves the address bar at once.
    page.goto(url)
    assert page.url == f"{base}/#/overview" or page.url == f"{base}/", page.url
    assert "token" not in page.url
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"].startswith("flux_dashboard"))
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # Create a key scoped to one function; its value is shown once.
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Name").fill("browser-key")
    page.get_by_label("Environment").select_option("live")
    page.get_by_role("checkbox", name="echo").check()
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key")
    expect(shown).to_have_value(re.compile(r"^flx_live_[0-9A-Za-z]{44}$"))
    key = shown.input_value()
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#new-key")).to_have_count(0)
    row = page.get_by_role("row", name=re.compile("browser-key"))
    expect(row).to_contain_text("echo")
    listing = page.evaluate("fetch('/api/keys').then(r => r.text())")
    assert key not in listing and key not in page.content()  # never shown again

    # The key works for its function only.
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.get("/other", headers=bearer(key)).status_code == 403

        # Call it and see the request in the live tail within a second.
        page.get_by_role("link", name="Requests").click()
        expect(page.locator(".live.on")).to_be_visible()
        answer = client.get("/echo", headers=bearer(key))
        called = time.monotonic()
        assert answer.status_code == 200
        request_id = answer.headers["x-request-id"]
        link = page.locator(f'a[href="#/trace/{request_id}"]')
        link.wait_for(timeout=1000)
        assert time.monotonic() - called < 1.0
        expect(page.get_by_role("row", name=re.compile(request_id[:12]))).to_contain_text(
            "browser-key"
        )

        # Its trace: gateway, runtime and function spans, and the function's log line.
        link.click()
        expect(page.get_by_role("heading", name="Trace")).to_be_visible(timeout=5000)
        for span in ("gateway", "runtime", "function"):
            expect(page.locator(f'li[data-span="{span}"]')).to_be_visible()
        expect(page.get_by_text("echo says hello")).to_be_visible()
        cli = json.loads(flux(shop, "trace", request_id, "--json").stdout)
        assert {s["name"] for s in cli["spans"]} >= {"gateway", "runtime", "function"}

        # An async job shows on the jobs page; the functions page lists the deployment.
        unscoped = flux(shop, "api-keys", "create", "--name", "jobs").stdout.strip()
        # The gateway picks a CLI-made key up within a second.
        queued = poll_until(
            lambda: (
                (answer := client.post("/later", headers=bearer(unscoped))).status_code != 401
                and answer
            ),
            timeout=1.5,
        )
        assert queued and queued.status_code == 202
        page.get_by_role("link", name="Async jobs").click()
        job = page.get_by_role("row", name=re.compile(queued.json()["request_id"][:12]))
        expect(job).to_contain_text("succeeded", timeout=10_000)
        expect(job).to_contain_text("1 / 3")
        page.get_by_role("link", name="Functions").click()
        expect(page.get_by_role("row", name=re.compile("^echo"))).to_contain_text("/echo")
        expect(page.get_by_role("row", name=re.compile("^later"))).to_contain_text("yes")

        # Screenshots of every page, at laptop and phone widths (the trace page included).
        pages = ["overview", "requests", "keys", "functions", "jobs", "settings"]
        SHOTS.mkdir(parents=True, exist_ok=True)
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            for name in [*pages, f"trace/{request_id}"]:
                page.goto(f"{base}/#/{name}")
                expect(page.locator("main h1")).to_be_visible(timeout=5000)
                page.wait_for_timeout(300)  # charts draw on the next frame
                label = name.split("/")[0]
                page.screenshot(path=str(SHOTS / f"{label}-{size}.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 800})

        # Revoke with a confirmation: a call with the key is refused within a second.
        page.goto(f"{base}/#/keys")
        page.get_by_role("button", name="Revoke key browser-key").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("browser-key")
        clicked = time.monotonic()
        dialog.get_by_role("button", name="Revoke").click()
        refused = poll_until(
            lambda: client.get("/echo", headers=bearer(key)).status_code == 401, timeout=2
        )
        assert refused and time.monotonic() - clicked < 1.0
        expect(page.get_by_role("row", name=re.compile("browser-key"))).to_contain_text("revoked")

    # Change the CORS allowlist: `flux project show` has it.
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("CORS allowlist").fill("https://app.example.com\nhttp://localhost:3000")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("Settings saved")
    shown_settings = json.loads(flux(shop, "project", "show", "--json").stdout)
    assert shown_settings["cors_origins"] == ["https://app.example.com", "http://localhost:3000"]

    # Keyboard: the nav is reachable with Tab and followed with Enter.
    page.goto(f"{base}/#/overview")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Requests":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Requests")).to_be_visible()
    assert not problems, problems
    context.close()


def test_a_burst_too_fast_to_show_leaves_a_marker_in_the_tail(
    gateway: RunningGateway, browser
) -> None:
    """More requests in a tick than a stream sends (docs/dashboard.md, "Cost to the
    gateway"): the newest rows show, and a row says how many were skipped."""
    from playwright.sync_api import expect

    url = login_url(gateway)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(url)
    page.goto(f"{origin_of(url)}/#/requests")
    expect(page.locator(".live.on")).to_be_visible()
    stop = threading.Event()

    def call() -> None:  # 401s: the gateway's quickest answers, rows all the same
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            while not stop.is_set():
                client.get("/echo")

    callers = [threading.Thread(target=call) for _ in range(8)]
    for caller in callers:
        caller.start()
    try:
        marker = page.locator("tr.gap").first
        expect(marker).to_have_text(re.compile(r"^[\d,]+ rows skipped$"), timeout=30_000)
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=15)
    skipped = int(re.sub(r"\D", "", marker.inner_text()))
    assert skipped > 0
    expect(page.locator(".live")).to_contain_text("too many to show")
    assert page.locator("tbody tr:not(.gap)").count() > 0  # the newest rows are there
    context.close()


def test_nothing_without_a_session(gateway: RunningGateway) -> None:
    base = origin_of(login_url(gateway))
    with httpx.Client(base_url=base, timeout=5) as client:
        for path in (
            "/",
            "/static/app.js",
            "/api/session",
            "/api/overview",
            "/api/keys",
            "/api/requests",
            "/api/functions",
            "/api/jobs",
            "/api/settings",
            "/api/traces/0123456789",
        ):
            answer = client.get(path)
            assert answer.status_code == 401, path
            assert "flx_" not in answer.text and "echo" not in answer.text
        with client.stream("GET", "/api/events") as events:
            assert events.status_code == 401
            assert "event:" not in events.read().decode()
        port = base.rsplit(":", 1)[1]
        forged = client.get("/api/keys", headers={"cookie": f"flux_dashboard_{port}=guess"})
        assert forged.status_code == 401
        assert client.post("/api/keys", json={"name": "x"}).status_code == 401


def test_host_and_origin_checks(shop: Path, gateway: RunningGateway) -> None:
    url = login_url(gateway)
    base = origin_of(url)
    with httpx.Client(base_url=base, timeout=5) as client:
        # DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own Host.
        rebound = client.get(url.replace(base, ""), headers={"host": "evil.example"})
        assert rebound.status_code == 421
        assert "set-cookie" not in rebound.headers
        login = client.get(url)  # the token still works: the refused request spent nothing
        assert login.status_code == 303 and login.headers["location"] == "/"
        for header, value in (
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ):
            assert login.headers[header] == value
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert client.get("/api/keys", headers={"host": "evil.example"}).status_code == 421
        csrf = client.get("/api/session").json()["csrf_token"]

        def create(name: str, **headers: str) -> httpx.Response:
            return client.post("/api/keys", json={"name": name}, headers=headers)

        other = "http://127.0.0.1:9"
        assert create("a", origin=other, **{"x-csrf-token": csrf}).status_code == 403
        assert create("b", origin=base).status_code == 403  # no CSRF token
        assert create("c", origin=base, **{"x-csrf-token": "wrong"}).status_code == 403
        assert create("d", **{"x-csrf-token": csrf}).status_code == 403  # no Origin
        made = create("e", origin=base, **{"x-csrf-token": csrf})
        assert made.status_code == 201 and made.json()["key"].startswith("flx_live_")
    names = {k["name"] for k in json.loads(flux(shop, "api-keys", "list", "--json").stdout)}
    assert names == {"e"}


def other_origin_page(target: str) -> PageServer:
    """A page on another loopback origin (another port of 127.0.0.1: the same site, so the
    browser sends the SameSite=Strict cookie along) with a form posting to the dashboard."""
    return PageServer(
        f"""<!doctype html><meta charset="utf-8"><title>other origin</title>
<form id="f" method="POST" action="{target}/api/keys" enctype="text/plain">
<input name='{{"name":"from-form","x":"' value='"}}'></form>"""
    )


def test_cross_origin_post_with_the_cookie_is_refused(
    shop: Path, gateway: RunningGateway, browser
) -> None:
    url = login_url(gateway)
    base = origin_of(url)
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.get_by_role("heading", name="Overview").wait_for()
    other = other_origin_page(base)
    try:
        page.goto(other.url)
        # A script's POST (no-cors: no preflight, the cookie goes along) reaches the listener;
        # its answer is not readable (Cross-Origin-Resource-Policy) and creates nothing...
        with page.expect_request(f"{base}/api/keys") as fetched:
            outcome = page.evaluate(
                """target => fetch(target + "/api/keys", {method: "POST", mode: "no-cors",
                credentials: "include", headers: {"content-type": "text/plain"},
                body: JSON.stringify({name: "from-fetch"})})
                .then(r => r.type).catch(e => String(e))""",
                base,
            )
        # ... and a form's: both refused (403, not 401: the session cookie was sent).
        with page.expect_response(f"{base}/api/keys") as submitted:
            page.evaluate("document.getElementById('f').submit()")
    finally:
        other.close()
    assert fetched.value.method == "POST"
    assert outcome != "basic"  # nothing the other page can read
    assert submitted.value.status == 403
    assert submitted.value.json()["error"] == "bad_origin"
    names = {k["name"] for k in json.loads(flux(shop, "api-keys", "list", "--json").stdout)}
    assert names == set()
    context.close()


def test_login_links_work_once_and_expire(shop: Path, gateway: RunningGateway) -> None:
    first = login_url(gateway)
    base = origin_of(first)
    with httpx.Client(timeout=5) as client:
        assert client.get(first).status_code == 303
        assert client.get(first).status_code == 403  # used up
    fresh = flux(shop, "dashboard").stdout.strip()
    assert fresh.startswith(f"{base}/login?token=")
    brief = flux(shop, "dashboard", "--ttl", "0.5").stdout.strip()
    expires = time.time() + 0.5
    # The gateway picks the handoff file up within its watch interval.
    with httpx.Client(timeout=5) as client:
        accepted = poll_until(lambda: client.get(fresh).status_code == 303, timeout=2)
        assert accepted
        poll_until(lambda: time.time() > expires + 0.05, timeout=2)
        refused = client.get(brief)
        assert refused.status_code == 403
        assert "set-cookie" not in refused.headers
        assert "flux dashboard" in refused.text
    handoff = shop / ".flux" / "dashboard-logins.json"
    assert handoff.stat().st_mode & 0o777 == 0o600
    assert fresh.split("=", 1)[1] not in handoff.read_text()  # only hashes are stored


def test_sessions_end_when_the_gateway_restarts(shop: Path) -> None:
    # A free port rather than the default 4001: the restart below reuses this port, and a
    # gateway of another test running in parallel could take 4001 in between.
    with serve(shop, "--dashboard-port", str(free_port())) as gw:
        url = login_url(gw)
        client = httpx.Client(timeout=5)
        assert client.get(url).status_code == 303
        base = origin_of(url)
        assert client.get(f"{base}/api/session").status_code == 200
    assert not (shop / ".flux" / "dashboard.json").exists()
    error = flux(shop, "dashboard", check=False)
    assert error.returncode == 1 and "no gateway is running" in error.stderr
    with serve(shop, "--dashboard-port", base.rsplit(":", 1)[1]) as gw:
        assert origin_of(login_url(gw)) == base
        assert client.get(f"{base}/api/session").status_code == 401
    client.close()


def test_dashboard_paths_are_not_on_the_public_port(shop: Path, gateway: RunningGateway) -> None:
    key = flux(shop, "api-keys", "create", "--name", "k").stdout.strip()
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        # a key made while serving is live within a second: wait for it, then probe
        assert poll_until(lambda: client.get("/echo", headers=bearer(key)).status_code == 200, 2)
        for path in ("/", "/login", "/static/app.js", "/api/keys", "/api/events"):
            answer = client.get(path, headers=bearer(key))
            assert answer.status_code == 404, path
            assert answer.json()["error"] == "not_found"


def test_no_dashboard(shop: Path) -> None:
    with serve(shop, "--no-dashboard") as gw:
        assert not any("Dashboard:" in line for line in gw.output)
        error = flux(shop, "dashboard", check=False)
        assert error.returncode == 1
        assert "--no-dashboard" in error.stderr and "Traceback" not in error.stderr


@pytest.mark.timing
@pytest.mark.parametrize("loop", ["trio", "asyncio"])
def test_live_tail_on_either_event_loop(shop: Path, loop: str) -> None:
    key = flux(shop, "api-keys", "create", "--name", "k").stdout.strip()
    with serve(shop, "--loop", loop) as gw, httpx.Client(timeout=10) as client:
        url = login_url(gw)
        base = origin_of(url)
        assert client.get(url).status_code == 303
        with client.stream("GET", f"{base}/api/events?function=echo") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            answer = client.get(f"{gw.url}/echo", headers=bearer(key))
            called = time.monotonic()
            request_id = answer.headers["x-request-id"]
            for line in events.iter_lines():
                if line.startswith("data:") and request_id in line:
                    break
            assert time.monotonic() - called < 1.0
            row = next(r for r in json.loads(line[5:]) if r["request_id"] == request_id)
            assert row["status"] == 200 and row["function"] == "echo" and row["key"] == "k"
            assert key not in line
