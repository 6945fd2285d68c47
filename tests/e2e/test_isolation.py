"""One invocation's crash or hang affects only itself (docs/reference.md#runtimes), through `flux
serve`.

Why three functions (``ok``, ``crash``, ``hang``) and not one function with three modes: a sync
python worker runs one invocation at a time, so five hanging requests would hold every worker
of a shared pool for a whole timeout and the ``ok`` requests queued behind them would get 503
``overloaded`` — correct behaviour, but not the isolation being measured. With separate pools
(``hang`` allowed five workers) the expected statuses are exact. The same isolation inside one
multiplexed worker is tests/e2e/test_concurrency.py's.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import flux, serve, write_function

from fluxgw.runtime.discovery import find_runtime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PY_OK = """
import os
def handler(request, ctx):
    return {"ok": True, "pid": os.getpid()}
"""
PY_CRASH = "import os\ndef handler(request, ctx):\n    os._exit(9)\n"
PY_HANG = "import time\ndef handler(request, ctx):\n    time.sleep(60)\n"

JS_OK = """
export default async function (req, ctx) {
  return { ok: true, pid: globalThis.Deno ? Deno.pid : process.pid };
}
"""
JS_CRASH = """
export default async function (req, ctx) {
  globalThis.Deno ? Deno.exit(9) : process.exit(9);
}
"""
JS_HANG = """
export default async function (req, ctx) {
  await new Promise((resolve) => setTimeout(resolve, 60000));
}
"""
JS_RUNTIMES = [rt for rt in ("node", "deno") if find_runtime(rt) is not None]


def setup_project(project: Path, functions: dict[str, tuple[str, str, dict]]) -> str:
    for name, (runtime, code, extra) in functions.items():
        write_function(project, name, code, runtime=runtime, route=f"/{name}", **extra)
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "pro")
    return flux(project, "api-keys", "create", "--name", "k").stdout.strip()


async def fire(client: httpx.AsyncClient, key: str, paths: list[str]) -> list[tuple[str, int]]:
    """All ``paths`` at once; (path, status) per request, in the order given."""
    results: list[tuple[str, int] | None] = [None] * len(paths)

    async def one(index: int, path: str) -> None:
        response = await client.post(path, headers={"authorization": f"Bearer {key}"})
        if response.status_code != 200:
            assert response.json()["request_id"] == response.headers["x-request-id"]
        results[index] = (path, response.status_code)

    async with anyio.create_task_group() as tasks:
        for index, path in enumerate(paths):
            tasks.start_soon(one, index, path)
    return [r for r in results if r is not None]


def by_path(results: list[tuple[str, int]]) -> dict[str, collections.Counter[int]]:
    out: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for path, status in results:
        out[path][status] += 1
    return dict(out)


async def test_five_crashes_and_five_hangs_fail_only_themselves(project: Path) -> None:
    key = setup_project(
        project,
        {
            "ok": ("python", PY_OK, {}),
            "crash": ("python", PY_CRASH, {}),
            "hang": ("python", PY_HANG, {"timeout": 1, "max_workers": 5}),
        },
    )
    paths = ["/ok"] * 10 + ["/crash"] * 5 + ["/hang"] * 5
    # interleave, so the crashes and hangs are in flight next to the ok requests
    paths = [paths[i] for i in sorted(range(20), key=lambda i: (i % 5, i))]
    with serve(project) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            started = time.monotonic()
            first = await fire(client, key, paths)
            elapsed = time.monotonic() - started
            statuses = collections.Counter(status for _, status in first)
            assert statuses == {200: 10, 502: 5, 504: 5}, by_path(first)
            assert by_path(first) == {"/ok": {200: 10}, "/crash": {502: 5}, "/hang": {504: 5}}
            assert elapsed < 5, elapsed  # the hangs cost one timeout (1 s), not five

            second = await fire(client, key, ["/ok"] * 20)
            assert [status for _, status in second] == [200] * 20


@pytest.mark.skipif(not JS_RUNTIMES, reason="neither node nor deno is installed")
async def test_js_crashes_and_hangs_fail_only_themselves(project: Path) -> None:
    functions: dict[str, tuple[str, str, dict]] = {}
    for rt in JS_RUNTIMES:
        functions[f"{rt}_ok"] = (rt, JS_OK, {})
        functions[f"{rt}_crash"] = (rt, JS_CRASH, {})
        functions[f"{rt}_hang"] = (rt, JS_HANG, {"timeout": 1})
    functions["py_ok"] = ("python", PY_OK, {})
    key = setup_project(project, functions)
    paths: list[str] = ["/py_ok"] * 3
    for rt in JS_RUNTIMES:
        paths += [f"/{rt}_ok"] * 4 + [f"/{rt}_crash"] * 3 + [f"/{rt}_hang"] * 3
    with serve(project) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            first = by_path(await fire(client, key, paths))
            expected = {"/py_ok": {200: 3}}
            for rt in JS_RUNTIMES:
                expected |= {
                    f"/{rt}_ok": {200: 4},
                    f"/{rt}_crash": {502: 3},
                    f"/{rt}_hang": {504: 3},
                }
            assert first == expected

            after = ["/py_ok"] * 3 + [f"/{rt}_ok" for rt in JS_RUNTIMES for _ in range(6)]
            assert all(status == 200 for _, status in await fire(client, key, after))
