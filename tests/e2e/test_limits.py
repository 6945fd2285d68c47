"""Per-function memory limit and bounded function output (docs/runtimes.md, "Limits"),
through the real `flux serve`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from conftest import JS_RUNTIMES, flux, serve, trace_of, write_function

from fluxgw.state import StateDir
from fluxgw.tracestore import TraceStore
from fluxgw.tracing import TraceNotFound

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ALL_RUNTIMES = [pytest.param("python"), *JS_RUNTIMES]

# Grows by 16 MiB every 20 ms, touching every page, until something stops it.
GROW = {
    "python": """
import os, time
def handler(request, ctx):
    if request["query"].get("pid"):
        return os.getpid()
    hoard = []
    while True:
        hoard.append(bytearray(os.urandom(1024)) * (16 * 1024))
        time.sleep(0.02)
""",
    "js": """
const pid = () => (globalThis.Deno ? Deno.pid : process.pid);
export default async function (req) {
  if (new URL(req.url).searchParams.get("pid")) return pid();
  const hoard = [];
  while (true) {
    hoard.push(new Uint8Array(16 * 1024 * 1024).fill(7));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
""",
}


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def worker_pid(project: Path, request_id: str) -> int:
    """The worker that served a request, as the gateway saw it (its trace's runtime span)."""
    store = TraceStore(StateDir(project).traces_db)
    deadline = time.monotonic() + 10
    while True:
        try:
            trace = store.get(request_id)
            return next(s for s in trace.spans if s.name == "runtime").attributes["worker_pid"]
        except TraceNotFound:
            assert time.monotonic() < deadline, "no trace"
            time.sleep(0.1)


def deploy(project: Path) -> str:
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "team")
    return flux(project, "api-keys", "create", "--name", "k").stdout.strip()


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_a_worker_over_its_memory_limit_is_killed_and_the_next_call_gets_a_fresh_one(
    project: Path, runtime: str
) -> None:
    code = GROW["python" if runtime == "python" else "js"]
    write_function(project, "grow", code, runtime=runtime, method="GET", memory=128, timeout=20)
    key = deploy(project)
    auth = {"authorization": f"Bearer {key}"}
    with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        first = client.get("/grow?pid=1", headers=auth)
        before = worker_pid(project, first.headers["x-request-id"])  # a host pid (sandbox)
        started = time.monotonic()
        answer = client.get("/grow", headers=auth)
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"] == "memory_limit_exceeded"
        assert "128 MiB" in answer.json()["message"]
        assert time.monotonic() - started < 10  # killed at the limit, not at the timeout
        assert gone(before, within=2.0)  # killed (SIGKILL to its group) as it answered
        after = client.get("/grow?pid=1", headers=auth)
        assert after.status_code == 200
        assert worker_pid(project, after.headers["x-request-id"]) != before  # a fresh worker


def test_a_python_function_allocating_2_gib_cannot_take_the_machine(project: Path) -> None:
    code = "def handler(request, ctx):\n    return len(b'x' * (2 * 1024 ** 3))\n"
    write_function(project, "huge", code, method="GET")  # default limit: 512 MiB
    key = deploy(project)
    with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        answer = client.get("/huge", headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 502
        assert answer.json()["error"] == "memory_limit_exceeded"
        gateway = psutil.Process(gw.process.pid)
        tree = [gateway, *gateway.children(recursive=True)]
        assert sum(p.memory_info().rss for p in tree if p.is_running()) < 1024**3


FLOOD = {
    # 200 MB through print (many lines), then one 50 MB line on raw fd 1
    "python": """
import os
def handler(request, ctx):
    line = "y" * 1023
    for _ in range(200 * 1024):
        print(line)
    os.write(1, b"z" * (50 * 1024 * 1024) + b"\\n")
    return "flooded"
""",
    "js": """
export default async function () {
  const line = "y".repeat(1023);
  for (let i = 0; i < 200 * 1024; i++) console.log(line);
  console.log("w".repeat(50 * 1024 * 1024));
  return "flooded";
}
""",
}


async def latency(client: httpx.AsyncClient, auth: dict[str, str], n: int = 20) -> float:
    """Median time of ``n`` sequential calls to the trivial function."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        assert (await client.get("/ping", headers=auth)).status_code == 200
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@pytest.mark.timing
@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
async def test_a_function_printing_200_mb_keeps_the_gateway_small_and_fast(
    project: Path, runtime: str
) -> None:
    code = FLOOD["python" if runtime == "python" else "js"]
    write_function(project, "flood", code, runtime=runtime, method="GET", memory=1024)
    write_function(project, "ping", "def handler(request, ctx):\n    return 1\n", method="GET")
    key = deploy(project)
    auth = {"authorization": f"Bearer {key}"}
    with serve(project) as gw:
        gateway = psutil.Process(gw.process.pid)
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            await latency(client, auth, 5)  # warm
            idle_rss = gateway.memory_info().rss
            baseline = await latency(client, auth)
            peak = idle_rss
            during: list[float] = []
            flooded: list[httpx.Response] = []

            async def flood() -> None:
                flooded.append(await client.get("/flood", headers=auth))

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(flood)
                while not flooded:
                    peak = max(peak, gateway.memory_info().rss)
                    during.append(await latency(client, auth, 3))
            answer = flooded[0]
            assert answer.status_code == 200 and answer.json() == "flooded"
            trace = await trace_of(project, answer.headers["x-request-id"])
    assert peak - idle_rss < 50 * 1024 * 1024, (peak - idle_rss) / 2**20
    assert statistics.median(during) < 2 * baseline, (during, baseline)
    texts = [line.text for line in trace.logs]
    assert len(texts) <= 1001
    assert any("lines dropped" in text for text in texts)
    assert all(len(text) <= 16 * 1024 + 100 for text in texts)
