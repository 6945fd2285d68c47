"""A real headless Chromium calls a token-only function with a user's token (docs/auth.md).

The page, served on another loopback origin, sends the token (a preflighted request), reads the
answer and its ``x-request-id``; an expired token's 401 is readable too, with its
``WWW-Authenticate`` challenge. The page reports what it saw by POSTing to its own server.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import test_browser
from conftest import FLUX, flux, serve, write_function
from signing import hs256
from test_browser import PageServer, visit

pytestmark = test_browser.pytestmark  # the browser mark, and the skip when Chromium is missing

SECRET = b"a browser test secret of 32+ bytes!!"
PAGE = """<!doctype html><meta charset="utf-8"><title>flux tokens</title>
<script>
async function probe(token) {
  try {
    const r = await fetch("%(gateway)s/me", {headers: {"Authorization": "Bearer " + token}});
    return {status: r.status, requestId: r.headers.get("x-request-id"),
            challenge: r.headers.get("www-authenticate"), body: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
}
(async () => {
  const results = {ok: await probe("%(token)s"), expired: await probe("%(expired)s")};
  await fetch("/report", {method: "POST", body: JSON.stringify(results)});
})();
</script>"""
ME = "def handler(request, ctx):\n    return {'user': ctx.auth['subject']}\n"


def test_browser_calls_a_jwt_function_with_a_token(project: Path, tmp_path: Path) -> None:
    write_function(project, "me", ME, route="/me", method="GET", auth="jwt")
    flux(project, "deploy")
    subprocess.run(
        [FLUX, "--project", str(project), "project", "update", "--jwt-secret-stdin"],
        input=SECRET,
        check=True,
        capture_output=True,
        timeout=60,
    )
    now = int(time.time())
    token = hs256(SECRET, {"sub": "ada", "iat": now, "exp": now + 600})
    expired = hs256(SECRET, {"sub": "ada", "iat": now - 7200, "exp": now - 3600})
    with serve(project) as gw:
        page = PageServer(PAGE % {"gateway": gw.url, "token": token, "expired": expired})
        try:
            report = visit(page.url, tmp_path / "profile", page)
        finally:
            page.close()
    ok, refused = report["ok"], report["expired"]
    assert ok.get("status") == 200, report
    assert json.loads(ok["body"]) == {"user": "ada"}
    assert len(ok["requestId"]) == 32
    assert refused.get("status") == 401, report
    body = json.loads(refused["body"])
    assert body["error"] == "token_expired" and body["request_id"] == refused["requestId"]
    assert refused["challenge"].startswith('Bearer error="invalid_token"')
