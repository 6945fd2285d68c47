"""Workers run in a sandbox (docs/sandbox.md), through the real `flux serve`.

A deployed function in each runtime tries what issue 10 found possible: read .flux/keys.json,
the gateway's /proc/<pid>/environ, traces.db and queue.db, and write a key into .flux/. Every
attempt is refused, while the same functions still answer and reach an HTTP server on loopback.
With --no-sandbox the gateway says so once at start and in /_flux/health.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import bearer, flux, serve, write_function

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap missing (scripts/setup)"),
]

# Each function gets {"targets": [...paths to read], "write": path, "url": loopback URL} and
# answers, per attempt, "ok" or the error it got.
PY_ESCAPE = """
import json, urllib.request
def handler(request, ctx):
    plan = json.loads(request["body"])
    out = {}
    for path in plan["targets"]:
        try:
            with open(path, "rb") as f:
                out[path] = "READ " + f.read(20).hex()
        except Exception as exc:
            out[path] = type(exc).__name__
    try:
        with open(plan["write"], "w") as f:
            f.write("{}")
        out["write"] = "WROTE"
    except Exception as exc:
        out["write"] = type(exc).__name__
    out["loopback"] = urllib.request.urlopen(plan["url"], timeout=5).read().decode()
    return out
"""
JS_ESCAPE = """
const isDeno = !!globalThis.Deno;
export default async function (req) {
  const plan = await req.json();
  const fs = isDeno ? null : await import("node:fs");
  const out = {};
  for (const path of plan.targets) {
    try {
      const data = isDeno ? Deno.readFileSync(path) : fs.readFileSync(path);
      out[path] = "READ " + data.length;
    } catch (e) { out[path] = e.name || e.code; }
  }
  try {
    isDeno ? Deno.writeTextFileSync(plan.write, "{}") : fs.writeFileSync(plan.write, "{}");
    out.write = "WROTE";
  } catch (e) { out.write = e.name || e.code; }
  out.loopback = await (await fetch(plan.url)).text();
  return out;
}
"""


@pytest.fixture
def loopback() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 (what 'a function calls another service' needs)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"pong"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_functions_cannot_reach_gateway_state(project: Path, loopback: str) -> None:
    for runtime in ("python", "node", "deno"):
        code = PY_ESCAPE if runtime == "python" else JS_ESCAPE
        write_function(project, f"escape_{runtime}", code, runtime=runtime)
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    state = project / ".flux"
    keys_before = (state / "keys.json").read_bytes()
    with (
        serve(project) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(key), timeout=30) as client,
    ):
        health = client.get("/_flux/health").json()
        assert health["sandbox"].startswith("bubblewrap"), health
        # queue.db and traces.db exist once the gateway runs
        assert (state / "queue.db").exists()
        for runtime in ("python", "node", "deno"):
            deployed = next((state / "deployments").glob(f"*/functions/escape_{runtime}"))
            targets = [
                str(state / "keys.json"),
                str(state / "traces.db"),
                str(state / "queue.db"),
                str(deployed / ".." / ".." / ".." / ".." / "keys.json"),  # relative climb
                f"/proc/{gw.process.pid}/environ",
            ]
            plan = {"targets": targets, "write": str(state / "keys.json"), "url": loopback}
            answer = client.post(f"/escape_{runtime}", content=json.dumps(plan))
            assert answer.status_code == 200, answer.text
            result = answer.json()
            assert result["loopback"] == "pong", (runtime, result)
            refused = {path: result[path] for path in targets}
            assert not [v for v in refused.values() if v.startswith("READ")], (runtime, result)
            # The write fails, or (a project under /tmp) lands on the worker's private
            # /tmp, which vanishes with it: either way the real file is untouched.
            assert (state / "keys.json").read_bytes() == keys_before, (runtime, result)
    assert (state / "keys.json").read_bytes() == keys_before
    startup = "".join(gw.output)
    assert "flux: workers run sandboxed (bubblewrap" in startup


def test_no_sandbox_is_said_once_at_start(project: Path) -> None:
    write_function(project, "hello", "def handler(r, c):\n    return 'hi'\n", method="GET")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    with (
        serve(project, "--no-sandbox") as gw,
        httpx.Client(base_url=gw.url, headers=bearer(key), timeout=30) as client,
    ):
        assert client.get("/hello").json() == "hi"
        health = client.get("/_flux/health").json()
    assert health["sandbox"].startswith("off"), health
    warnings = [line for line in gw.output if "WITHOUT a sandbox" in line]
    assert len(warnings) == 1, gw.output
