"""The pool with real node and deno workers (one shim, js_worker.mjs), and a missing runtime."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import attrs
import pytest
from conftest import BOTH_LOOPS, JS_RUNTIMES

from fluxgw.project import FunctionSpec
from fluxgw.runtime.api import FunctionFailed, Invocation
from fluxgw.runtime.discovery import RuntimeFinder
from fluxgw.runtime.pool import PoolManager

pytestmark = [pytest.mark.timeout(60), BOTH_LOOPS]

ENTRY = {"node": "index.js", "deno": "index.ts"}
RUNTIMES = JS_RUNTIMES

HANDLER = """
export default async function (req, ctx) {
  const url = new URL(req.url);
  const mode = url.searchParams.get("mode");
  console.log("got", req.method, url.pathname, mode);
  if (mode === "plain") {
    return { hello: "world", id: ctx.requestId, id2: ctx.request_id, fn: ctx.function };
  }
  if (mode === "throw") throw new TypeError("nope");
  if (mode === "hang") await new Promise((resolve) => setTimeout(resolve, 30000));
  if (mode === "exit") (globalThis.Deno ? Deno.exit(3) : process.exit(3));
  if (mode === "pid") return globalThis.Deno ? Deno.pid : process.pid;
  const body = new Uint8Array(await req.arrayBuffer());
  const headers = new Headers({ "content-type": "application/octet-stream" });
  headers.append("set-cookie", "a=1; Path=/");
  headers.append("set-cookie", "b=2; Path=/");
  const auth = String(req.headers.get("authorization"));
  const seen = [req.headers.get("x-custom"), auth, url.searchParams.getAll("q")];
  headers.set("x-seen", seen.join("|"));
  return new Response(body.reverse(), { status: 201, headers });
}
"""


def make_function(root: Path, runtime: str, code: str, *, timeout: float = 5) -> FunctionSpec:
    folder = root / f"fn_{runtime}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENTRY[runtime]).write_text(textwrap.dedent(code))
    return FunctionSpec(
        name=f"fn_{runtime}",
        runtime=runtime,
        route="/fn",
        method="POST",
        directory=folder,
        entry=ENTRY[runtime],
        timeout=timeout,
    )


def call(spec: FunctionSpec, mode: str, body: bytes = b"", **extra: object) -> Invocation:
    return Invocation(
        request_id="req-js",
        method="POST",
        path="/fn",
        deadline=time.time() + spec.timeout,
        query=(("mode", mode), ("q", "1"), ("q", "2")),
        headers=(("x-custom", "yes"), ("authorization", "Bearer secret")),
        body=body,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def pool(tasks: anyio.abc.TaskGroup) -> AsyncIterator[PoolManager]:
    manager = PoolManager()
    await tasks.start(manager.run)
    yield manager
    await manager.aclose()


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_plain_value_and_full_response(
    pool: PoolManager, tmp_path: Path, runtime: str
) -> None:
    spec = make_function(tmp_path, runtime, HANDLER)
    plain = await pool.invoke(spec, call(spec, "plain"))
    assert plain.status == 200 and ("content-type", "application/json") in plain.headers
    assert json.loads(plain.body) == {
        "hello": "world",
        "id": "req-js",
        "id2": "req-js",
        "fn": spec.name,
    }
    assert [line.text for line in plain.logs] == ["got POST /fn plain"]
    assert plain.logs[0].stream == "stdout"

    payload = bytes(range(256)) * 64
    full = await pool.invoke(spec, call(spec, "full", payload))
    assert full.status == 201 and full.body == payload[::-1]
    assert [v for k, v in full.headers if k == "set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert ("x-seen", "yes|null|1,2") in full.headers  # caller's Authorization never arrives
    assert ("content-type", "application/octet-stream") in full.headers
    assert full.worker_pid == plain.worker_pid and not full.cold_start


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_throw_is_502_and_worker_survives(
    pool: PoolManager, tmp_path: Path, runtime: str
) -> None:
    spec = make_function(tmp_path, runtime, HANDLER)
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, "throw"))
    assert failed.value.status == 502 and failed.value.code == "function_error"
    assert "TypeError: nope" in failed.value.message
    ok = await pool.invoke(spec, call(spec, "pid"))
    assert int(ok.body) == failed.value.worker_pid


@pytest.mark.timing
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_hang_is_504(pool: PoolManager, tmp_path: Path, runtime: str) -> None:
    spec = make_function(tmp_path, runtime, HANDLER, timeout=1)
    await pool.invoke(spec, call(spec, "pid"))  # warm, so the timeout measures the hang only
    started = time.monotonic()
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, "hang"))
    assert failed.value.status == 504 and failed.value.code == "function_timeout"
    assert time.monotonic() - started < 1.8
    assert "got POST /fn hang" in [line.text for line in failed.value.logs]
    assert (await pool.invoke(spec, call(spec, "plain"))).status == 200


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_exit_is_502_then_recovery(pool: PoolManager, tmp_path: Path, runtime: str) -> None:
    spec = make_function(tmp_path, runtime, HANDLER)
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, "exit"))
    assert failed.value.status == 502 and failed.value.code == "function_crashed"
    assert "code 3" in failed.value.message
    after = await pool.invoke(spec, call(spec, "pid"))
    assert after.status == 200 and int(after.body) != failed.value.worker_pid


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("code", "expected"),
    [("export default async function (req) { return (;\n}\n", "SyntaxError"),
     ("export const x = 1;\n", "no default export")],
)  # fmt: skip
async def test_broken_module_fails_to_start(
    pool: PoolManager, tmp_path: Path, runtime: str, code: str, expected: str
) -> None:
    spec = make_function(tmp_path, runtime, code)
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, "plain"))
    assert failed.value.status == 502 and failed.value.code == "function_failed_to_start"
    assert expected in failed.value.message


async def test_missing_runtime_is_502_with_install_hint(
    tasks: anyio.abc.TaskGroup, tmp_path: Path
) -> None:
    finder = RuntimeFinder(env={"FLUX_DENO": "/nonexistent/deno", "PATH": ""}, fallback_dir=None)
    assert "npm install deno" in (finder.problem("deno") or "")
    assert finder.problem("python") is None
    no_path = RuntimeFinder(env={"PATH": str(tmp_path)}, fallback_dir=None)
    assert no_path.find("deno") is None and no_path.find("node") is None
    pool = PoolManager(finder=finder)
    await tasks.start(pool.run)
    spec = make_function(tmp_path, "deno", HANDLER)
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, "plain"))
    assert failed.value.status == 502 and failed.value.code == "runtime_unavailable"
    assert "deno is not installed" in failed.value.message
    await pool.aclose()


SPIN = """
export default async function (req) {
  const mode = new URL(req.url).searchParams.get("mode");
  if (mode === "spin") while (true) {}  // blocks the worker's event loop: cancel cannot land
  if (mode === "slow") await new Promise((resolve) => setTimeout(resolve, 5000));
  return globalThis.Deno ? Deno.pid : process.pid;
}
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_worker_that_must_be_killed_fails_its_neighbours_with_worker_lost(
    pool: PoolManager, tmp_path: Path, runtime: str
) -> None:
    spec = make_function(tmp_path, runtime, SPIN, timeout=10)
    first_pid = int((await pool.invoke(spec, call(spec, "pid"))).body)
    outcomes: dict[str, FunctionFailed] = {}

    async def one(mode: str, seconds: float) -> None:
        with pytest.raises(FunctionFailed) as failed:
            invocation = attrs.evolve(call(spec, mode), deadline=time.time() + seconds)
            await pool.invoke(spec, invocation)
        outcomes[mode] = failed.value

    async with anyio.create_task_group() as group:
        group.start_soon(one, "slow", 8.0)  # a neighbour, well within its own deadline
        await anyio.sleep(0.2)
        group.start_soon(one, "spin", 1.0)
    assert outcomes["spin"].code == "function_timeout"
    assert outcomes["slow"].status == 502 and outcomes["slow"].code == "worker_lost"
    after = int((await pool.invoke(spec, call(spec, "pid"))).body)
    assert after != first_pid  # a fresh worker
