"""A real headless Chromium calls the gateway from another origin (docs/reference.md#cors).

A page served on one loopback origin calls a function on the gateway's origin with a key
(a preflighted request), reads ``x-request-id``, reads a 401 and its ``x-request-id``, and is
refused by the browser once the project's allowlist excludes its origin. The page reports what
it saw by POSTing to its own server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PageServer, flux, serve, write_function

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="chromium not installed (scripts/setup --test installs it)",
    ),
]

PAGE = """<!doctype html><meta charset="utf-8"><title>flux cors</title>
<script>
async function probe(url, options) {
  try {
    const r = await fetch(url, options);
    return {status: r.status, requestId: r.headers.get("x-request-id"),
            policyVisible: r.headers.has("ratelimit-policy"), body: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
}
(async () => {
  const gw = "%(gateway)s";
  const results = {
    ok: await probe(gw + "/echo", {method: "POST",
        headers: {"Authorization": "Bearer %(key)s", "Content-Type": "application/json"},
        body: JSON.stringify({from: "browser"})}),
    unauthorized: await probe(gw + "/echo", {method: "POST"}),
  };
  await fetch("/report", {method: "POST", body: JSON.stringify(results)});
})();
</script>"""


def visit(
    url: str,
    profile: Path,
    page: PageServer,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> dict:
    assert CHROMIUM, "chromium is required (scripts/setup --test)"
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={profile}",
            *args,
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert page.arrived.wait(60), "the page never reported"
        return page.reports[-1]
    finally:
        browser.terminate()  # a clean exit: Chromium flushes what it writes (a --log-net-log)
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(10)
        subprocess.run(["pkill", "-KILL", "-s", str(browser.pid)], check=False)


ECHO = "def handler(request, ctx):\n    return {'got': request['body']}\n"


def browse(project: Path, tmp_path: Path, *allowlist: str) -> dict:
    """Deploy the echo function, serve it, and let the browser page call it; its report."""
    write_function(project, "echo", ECHO, route="/echo")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "browser").stdout.strip()
    for origin in allowlist:
        flux(project, "project", "update", "--cors-origin", origin)
    with serve(project) as gw:
        page = PageServer(PAGE % {"gateway": gw.url, "key": key})
        try:
            return visit(page.url, tmp_path / "profile", page)
        finally:
            page.close()


def test_browser_reads_request_ids_from_another_origin(project: Path, tmp_path: Path) -> None:
    report = browse(project, tmp_path)
    ok, unauthorized = report["ok"], report["unauthorized"]
    assert ok.get("status") == 200, report
    assert json.loads(ok["body"]) == {"got": {"from": "browser"}}
    assert len(ok["requestId"]) >= 16
    assert ok["policyVisible"] is True  # RateLimit-Policy is exposed to scripts
    assert unauthorized.get("status") == 401, report
    assert len(unauthorized["requestId"]) >= 16
    assert json.loads(unauthorized["body"])["request_id"] == unauthorized["requestId"]


def test_browser_is_refused_when_its_origin_is_not_allowed(project: Path, tmp_path: Path) -> None:
    report = browse(project, tmp_path, "https://only.example.com")
    assert "error" in report["ok"], report  # the browser blocked the POST: no Allow-Origin
    assert "error" in report["unauthorized"], report
