"""Many concurrent invocations per worker, pool growth, honest 503s (docs/runtimes.md,
"Concurrency"), through the real `flux serve`."""

from __future__ import annotations

import collections
import contextlib
import time
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import JS_RUNTIMES, flux, serve, write_function

from fluxgw.state import StateDir
from fluxgw.tracestore import TraceStore
from fluxgw.tracing import TraceNotFound, TraceRecord

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ALL_RUNTIMES = [pytest.param("python"), *JS_RUNTIMES]

AWAIT_ONE_SECOND = {
    "python": """
import asyncio
async def handler(request, ctx):
    await asyncio.sleep(1)
    return {"n": request["query"].get("n")}
""",
    "js": """
export default async function (req) {
  await new Promise((resolve) => setTimeout(resolve, 1000));
  return { n: new URL(req.url).searchParams.get("n") };
}
""",
}


def deploy(project: Path) -> str:
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "team")
    return flux(project, "api-keys", "create", "--name", "k").stdout.strip()


async def fire(url: str, key: str, paths: list[str], timeout: float = 30) -> list[httpx.Response]:
    """All ``paths`` at once, each on its own connection; the answers in the order given."""
    answers: list[httpx.Response | None] = [None] * len(paths)
    limits = httpx.Limits(max_connections=len(paths), max_keepalive_connections=len(paths))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(index: int, path: str) -> None:
            answers[index] = await client.get(path, headers={"authorization": f"Bearer {key}"})

        async with anyio.create_task_group() as nursery:
            for index, path in enumerate(paths):
                nursery.start_soon(one, index, path)
    return [answer for answer in answers if answer is not None]


@pytest.mark.timing
@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
async def test_100_concurrent_calls_to_a_1s_async_function_all_succeed_within_3s(
    project: Path, runtime: str
) -> None:
    code = AWAIT_ONE_SECOND["python" if runtime == "python" else "js"]
    write_function(project, "wait", code, runtime=runtime, method="GET", timeout=2)
    key = deploy(project)
    with serve(project) as gw:
        await fire(gw.url, key, ["/wait?n=-1"])  # one warm worker: measure serving, not spawning
        started = time.monotonic()
        answers = await fire(gw.url, key, [f"/wait?n={i}" for i in range(100)])
        elapsed = time.monotonic() - started
        metrics = httpx.get(f"{gw.url}/_flux/metrics", headers={"authorization": f"Bearer {key}"})
    assert collections.Counter(a.status_code for a in answers) == {200: 100}
    assert sorted(int(a.json()["n"]) for a in answers) == list(range(100))
    assert elapsed < 3, elapsed  # one or two workers serve them all at once, not 4 at a time
    # Served by few workers (concurrency per worker), not one process per call.
    workers = [
        line
        for line in metrics.text.splitlines()
        if line.startswith('flux_workers{function="wait"')
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in workers) <= 2, workers


async def test_a_sync_python_function_under_that_load_answers_200_or_503_never_504(
    project: Path,
) -> None:
    code = "import time\ndef handler(request, ctx):\n    time.sleep(0.2)\n    return 'ok'\n"
    write_function(project, "sync", code, method="GET", timeout=2, max_workers=2)
    key = deploy(project)
    with serve(project) as gw:
        answers = await fire(gw.url, key, ["/sync"] * 100)
    statuses = collections.Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 503}, statuses  # zero 504s: the refused calls never ran
    assert statuses[200] >= 4 and statuses[503] >= 1, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"] == "overloaded"
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.json()["request_id"] == answer.headers["x-request-id"]


MIXED_NODE = """
export default async function (req) {
  const kind = new URL(req.url).searchParams.get("kind");
  if (kind === "throw") throw new Error("boom");
  if (kind === "hang") await new Promise(() => {});  // never settles: cancelled at its timeout
  await new Promise((resolve) => setTimeout(resolve, 50));
  return { pid: process.pid };
}
"""


async def test_throwing_and_hanging_invocations_on_one_node_worker_fail_only_themselves(
    project: Path,
) -> None:
    write_function(
        project, "mixed", MIXED_NODE, runtime="node", method="GET", timeout=1, max_workers=1
    )
    key = deploy(project)
    kinds = ["ok"] * 10 + ["throw"] * 5 + ["hang"] * 5
    kinds = [kinds[i] for i in sorted(range(20), key=lambda i: (i % 5, i))]  # interleaved
    with serve(project) as gw:
        await fire(gw.url, key, ["/mixed?kind=ok"])  # its one worker is up: isolation, not spawning
        first = await fire(gw.url, key, [f"/mixed?kind={kind}" for kind in kinds])
        by_kind: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for kind, answer in zip(kinds, first, strict=True):
            by_kind[kind][answer.status_code] += 1
        assert by_kind == {"ok": {200: 10}, "throw": {502: 5}, "hang": {504: 5}}
        codes = {a.json()["error"] for a in first if a.status_code != 200}
        assert codes == {"function_error", "function_timeout"}
        second = await fire(gw.url, key, ["/mixed?kind=ok"] * 20)
        assert [a.status_code for a in second] == [200] * 20
    # One worker served all of it: the hangs were cancelled, not killed with their neighbours.
    pids = {a.json()["pid"] for a in [*first, *second] if a.status_code == 200}  # the warm one
    assert len(pids) == 1, pids


LOGGING = {
    "python": """
import asyncio, random
async def handler(request, ctx):
    n = request["query"]["n"]
    print(f"start {n}")
    await asyncio.sleep(random.random() / 5)
    ctx.logger.info(f"middle {n}")
    await asyncio.sleep(random.random() / 5)
    print(f"end {n}")
    return n
""",
    "js": """
export default async function (req) {
  const n = new URL(req.url).searchParams.get("n");
  console.log(`start ${n}`);
  await new Promise((resolve) => setTimeout(resolve, Math.random() * 200));
  console.error(`middle ${n}`);
  await new Promise((resolve) => setTimeout(resolve, Math.random() * 200));
  console.log(`end ${n}`);
  return n;
}
""",
}


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
async def test_log_lines_of_50_concurrent_invocations_land_in_their_own_traces(
    project: Path, runtime: str
) -> None:
    code = LOGGING["python" if runtime == "python" else "js"]
    write_function(project, "talk", code, runtime=runtime, method="GET", max_workers=1)
    key = deploy(project)
    with serve(project) as gw:
        answers = await fire(gw.url, key, [f"/talk?n={i}" for i in range(50)])
        assert [a.status_code for a in answers] == [200] * 50
        ids = {a.headers["x-request-id"]: a.json() for a in answers}
        store = TraceStore(StateDir(project).traces_db)  # what `flux trace ID` reads
        found: dict[str, TraceRecord] = {}
        deadline = time.monotonic() + 10
        while len(found) < 50 and time.monotonic() < deadline:  # the writer batches
            for request_id in ids.keys() - found.keys():
                with contextlib.suppress(TraceNotFound):
                    found[request_id] = store.get(request_id)
            await anyio.sleep(0.2)
    assert len(found) == 50
    for request_id, n in ids.items():
        texts = [line.text for line in found[request_id].logs]
        assert [t.split()[-1] for t in texts] == [n, n, n], texts
        assert texts[0] == f"start {n}" and texts[-1] == f"end {n}"
