"""The pipeline's end-to-end suite for node and deno functions, through the real `flux serve`.

One gateway per runtime (module scope: a JS cold start is paid once per worker, not per test)
serves ``js`` (the Fetch API handler below, timeout 30 s) and ``js_hang`` (timeout 1 s). The
deno copy of the handler carries TypeScript annotations: deno runs ``index.ts`` natively.
A last test removes deno from the gateway's view and checks the install hint
(docs/reference.md#runtimes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import JS_RUNTIMES, flux, serve, write_function

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

RUNTIMES = JS_RUNTIMES

HANDLER = """
const rt = globalThis.Deno ? "deno" : "node";
// Which worker answered: a pid inside the sandbox's own pid namespace is the same in every one.
const WORKER = crypto.randomUUID();
export default async function (req, ctx) {
  const url = new URL(req.url);
  const mode = url.searchParams.get("mode");
  if (mode === "plain") return { hello: "world", runtime: rt };
  if (mode === "response") {
    const headers = new Headers({ "content-type": "application/octet-stream" });
    headers.append("set-cookie", "a=1; Path=/");
    headers.append("set-cookie", "b=2; Path=/; HttpOnly");
    headers.set("x-seen", String(req.headers.get("x-custom")));
    const body = new Uint8Array(256);
    for (let i = 0; i < 256; i++) body[i] = 255 - i;
    return new Response(body, { status: 201, headers });
  }
  if (mode === "ids") {
    return {
      requestId: ctx.requestId,
      header: req.headers.get("x-request-id"),
      traceparent: req.headers.get("traceparent"),
      authorization: req.headers.get("authorization"),
    };
  }
  if (mode === "echo") {
    return {
      method: req.method,
      query: Object.fromEntries(url.searchParams),
      all: url.searchParams.getAll("q"),
      body: await req.json(),
    };
  }
  if (mode === "throw") throw new RangeError("broken on purpose");
  if (mode === "exit") (globalThis.Deno ? Deno.exit(7) : process.exit(7));
  if (mode === "worker") return { worker: WORKER };
  if (mode === "log") {
    console.log("a line", { nested: true });
    console.error("to stderr\\nand a second line");
    // Bytes that look like a protocol frame, written raw to fd 1: must stay harmless.
    const raw = new Uint8Array([0, 0, 0, 2, 0, 0, 0, 0, 123, 125, 10]);
    if (globalThis.Deno) Deno.stdout.writeSync(raw); else process.stdout.write(raw);
    return { logged: true };
  }
  if (mode === "child-stdin") {
    // A child inheriting the worker's stdin (deno's Deno.Command default) must not be able to
    // read the gateway's request frames: it gets /dev/null. `cat` exits at once on EOF.
    // deno may not start processes at all (no --allow-run): Deno.Command is refused.
    if (globalThis.Deno) {
      try {
        new Deno.Command("cat", { stdout: "null", stderr: "null" }).spawn();
      } catch (error) {
        return { spawned: false, error: `${error.name}: ${error.message}` };
      }
    } else {
      const { spawn } = await import("node:child_process");
      spawn("cat", [], { stdio: ["inherit", "ignore", "ignore"] });
    }
    return { spawned: true };
  }
  if (mode === "vary") {
    const headers = { vary: "Accept-Encoding", "content-type": "text/plain" };
    return new Response("text", { headers });
  }
  return new Response("unknown mode", { status: 400 });
}
"""
HANG = """
export default async function (req, ctx) {
  await new Promise((resolve) => setTimeout(resolve, 60000));
  return "never";
}
"""
PY_OK = "def handler(request, ctx):\n    return {'ok': True}\n"


def source(code: str, runtime: str) -> str:
    if runtime == "deno":  # TypeScript, run natively by deno
        return code.replace("(req, ctx)", "(req: Request, ctx: { requestId: string })")
    return code


class Served:
    def __init__(self, client: httpx.Client, key: str, runtime: str) -> None:
        self.client = client
        self.auth = {"authorization": f"Bearer {key}"}
        self.runtime = runtime

    def call(self, mode: str, **kwargs: object) -> httpx.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return self.client.post(f"/js?mode={mode}", headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=RUNTIMES)
def js(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    runtime: str = request.param
    project = tmp_path_factory.mktemp(f"js_{runtime}") / "proj"
    (project / "functions").mkdir(parents=True)
    write_function(project, "js", source(HANDLER, runtime), runtime=runtime, route="/js")
    write_function(
        project, "js_hang", source(HANG, runtime), runtime=runtime, route="/hang", timeout=1
    )
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "pro")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        served = Served(client, key, runtime)
        assert served.call("plain").status_code == 200  # cold start outside the timings
        yield served


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body["message"]


def test_plain_value_is_200_json(js: Served) -> None:
    response = js.call("plain")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"hello": "world", "runtime": js.runtime}


def test_response_status_headers_cookies_and_binary_body(js: Served) -> None:
    response = js.call("response", headers={"x-custom": "from the caller"})
    assert response.status_code == 201
    assert response.headers["x-seen"] == "from the caller"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    assert response.cookies["a"] == "1" and response.cookies["b"] == "2"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == bytes(range(255, -1, -1))
    assert response.headers["x-request-id"]


def test_function_sees_request_id_and_traceparent_never_authorization(js: Served) -> None:
    response = js.call("ids", headers={"x-request-id": "client-chosen"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["requestId"] == response.headers["x-request-id"] == seen["header"]
    assert seen["header"] != "client-chosen"
    version, trace_id, span_id, flags = seen["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and len(flags) == 2
    assert seen["authorization"] is None


def test_query_and_json_body_through_the_fetch_request(js: Served) -> None:
    response = js.client.post(
        "/js?mode=echo&q=1&q=2&name=caf%C3%A9", headers=js.auth, json={"items": [1, 2], "x": "y"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "method": "POST",
        "query": {"mode": "echo", "q": "2", "name": "café"},
        "all": ["1", "2"],
        "body": {"items": [1, 2], "x": "y"},
    }


def test_thrown_error_is_502_json_and_the_worker_stays(js: Served) -> None:
    before = js.call("worker").json()["worker"]
    message = assert_error(js.call("throw"), 502, "function_error")
    assert "RangeError: broken on purpose" in message
    assert js.call("worker").json()["worker"] == before  # a handler error is no crash


@pytest.mark.timing
def test_hang_past_timeout_is_504_within_two_seconds(js: Served) -> None:
    started = time.monotonic()
    response = js.client.post("/hang", headers=js.auth)
    elapsed = time.monotonic() - started
    message = assert_error(response, 504, "function_timeout")
    assert "timed out" in message
    assert elapsed < 2.2, elapsed
    assert js.call("plain").status_code == 200


def test_exit_is_502_then_the_next_request_is_200(js: Served) -> None:
    message = assert_error(js.call("exit"), 502, "function_crashed")
    assert "code 7" in message
    assert js.call("plain").status_code == 200


def test_console_output_never_corrupts_the_answer(js: Served) -> None:
    for _ in range(3):
        response = js.call("log")
        assert response.status_code == 200 and response.json() == {"logged": True}
    assert js.call("plain").json()["hello"] == "world"


def test_a_child_inheriting_stdin_cannot_swallow_requests(js: Served) -> None:
    answer = js.call("child-stdin")
    assert answer.status_code == 200, answer.text
    if js.runtime == "deno":  # no --allow-run: refused before any child exists
        assert answer.json()["spawned"] is False
        assert "NotCapable: Requires run access" in answer.json()["error"], answer.text
    for _ in range(4):  # before the fix, the next request's frame went to `cat`: a 504
        assert js.call("plain").status_code == 200


def test_function_vary_merges_with_gateway_vary_origin(js: Served) -> None:
    response = js.call("vary", headers={"origin": "https://app.example"})
    assert response.status_code == 200 and response.text == "text"
    vary = response.headers.get_list("vary")
    assert len(vary) == 1, vary
    values = [v.strip().lower() for v in vary[0].split(",")]
    assert sorted(values) == ["accept-encoding", "origin"]
    assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_missing_deno_is_named_by_deploy_and_gives_502_with_install_hint(
    project: Path, tmp_path: Path
) -> None:
    write_function(project, "edge", source(HANDLER, "deno"), runtime="deno", route="/edge")
    write_function(project, "ok", PY_OK, route="/ok")
    # FLUX_DENO naming a missing file means "deno is not installed" (no fallback to PATH or
    # the project's .tools copy); PATH gets an empty folder so no deno can be found anywhere.
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    path = os.pathsep.join([str(empty), "/usr/bin", "/bin"])
    assert not any(Path(d, "deno").exists() for d in path.split(os.pathsep))
    no_deno = {"FLUX_DENO": str(tmp_path / "nonexistent" / "deno"), "PATH": path}
    deployed = flux(project, "deploy", env=no_deno)
    output = deployed.stdout + deployed.stderr
    assert "function edge" in output and "deno is not installed" in output
    assert "npm install" in output  # the install command
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with serve(project, env=no_deno) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        message = assert_error(
            client.post("/edge?mode=plain", headers=auth), 502, "runtime_unavailable"
        )
        assert "deno is not installed" in message and "npm install" in message
        for _ in range(3):
            ok = client.post("/ok", headers=auth)
            assert ok.status_code == 200 and ok.json() == {"ok": True}
