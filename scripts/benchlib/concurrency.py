"""Concurrent invocations (scripts/bench section ``concurrency``).

Per runtime: N calls at once (N = 100 and 1,000; quick: 100 and 300) to an async function that
awaits 1 s, at the default pool settings: statuses, wall time, peak RSS of the gateway and of
its workers; and the throughput of a trivial async function at c=32 (wrk), as a ratio of the
bare hypercorn app measured in the same run. The client is httpx on one event loop: at 1,000
connections its own CPU time is part of the wall time (figures are an upper bound).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil

from fluxgw.runtime.discovery import find_runtime

from . import servers
from .wrk import run_wrk

WAIT = {
    "python": (
        "main.py",
        "import asyncio\nasync def handler(request, ctx):\n    await asyncio.sleep(1)\n"
        "    return 1\n",
    ),
    "node": (
        "index.js",
        "export default async function () {\n"
        "  await new Promise((r) => setTimeout(r, 1000));\n  return 1;\n}\n",
    ),
    "deno": (
        "index.ts",
        "export default async function () {\n"
        "  await new Promise((r) => setTimeout(r, 1000));\n  return 1;\n}\n",
    ),
}
FAST = {
    "python": ("main.py", "async def handler(request, ctx):\n    return 1\n"),
    "node": ("index.js", "export default async function () { return 1; }\n"),
    "deno": ("index.ts", "export default async function () { return 1; }\n"),
}


def _project(root: Path, runtimes: list[str]) -> tuple[Path, str]:
    for runtime in runtimes:
        for kind, table in (("wait", WAIT), ("fast", FAST)):
            entry, code = table[runtime]
            name = f"{kind}_{runtime}"
            folder = root / "functions" / name
            folder.mkdir(parents=True, exist_ok=True)
            spec = {"name": name, "runtime": runtime, "method": "GET", "timeout": 10}
            (folder / "flux.json").write_text(json.dumps(spec))
            (folder / entry).write_text(code)
    servers.flux(root, "deploy")
    servers.flux(root, "project", "update", "--plan", "team")
    return root, servers.flux(root, "api-keys", "create", "--name", "bench").strip()


class _RssSampler:
    """Peak RSS of the gateway and of its worker tree, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.gateway = 0
        self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.gateway = max(self.gateway, self.root.memory_info().rss)
                total = 0
                for child in self.root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
                self.workers = max(self.workers, total)
            except psutil.Error:
                return
            time.sleep(0.02)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _burst(url: str, key: str, n: int) -> tuple[float, dict[int, int]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> None:
            try:
                status = (
                    await client.get(url, headers={"authorization": f"Bearer {key}"})
                ).status_code
            except httpx.HTTPError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(n):
                group.start_soon(one)
        return time.perf_counter() - started, statuses


def measure(work: Path, runtimes: list[str], quick: bool, seconds: float) -> dict[str, Any]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    project, key = _project(work / "concurrency", runtimes)
    sizes = (100, 300) if quick else (100, 1000)
    out: dict[str, Any] = {"bursts": {}, "throughput": {}}
    port = servers.free_port()
    with servers.ceiling_server(port, logs).start():
        out["ceiling_rps"] = run_wrk(
            f"http://127.0.0.1:{port}/", connections=32, seconds=seconds
        ).rps
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    with servers.gateway_server(project, port, logs, name="gateway-concurrency").start() as gw:
        for runtime in runtimes:
            servers.get(f"{base}/wait_{runtime}", key)  # one warm worker, as in steady state
            for n in sizes:
                with _RssSampler(gw.pid) as rss:
                    wall, statuses = anyio.run(_burst, f"{base}/wait_{runtime}", key, n)
                out["bursts"][f"{runtime}:{n}"] = {
                    "wall_s": wall,
                    "statuses": statuses,
                    "gateway_rss_mib": rss.gateway / 2**20,
                    "workers_rss_mib": rss.workers / 2**20,
                }
            servers.get(f"{base}/fast_{runtime}", key)
            result = run_wrk(
                f"{base}/fast_{runtime}",
                connections=32,
                seconds=seconds,
                headers={"Authorization": f"Bearer {key}"},
            )
            out["throughput"][runtime] = {"rps": result.rps, "p50_ms": result.p50_ms}
    return out


def section(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """Summary rows [figure, measured, target, met?] for scripts/bench's ``concurrency``."""
    runtimes = [rt for rt in ("python", "node", "deno") if find_runtime(rt)]
    results = measure(work, runtimes, s.quick, s.seconds)
    table: list[list[str]] = []
    for name, burst in results["bursts"].items():
        runtime, n = name.split(":")
        ok = burst["statuses"].get(200, 0)
        limit = 1.5 if n == "100" else 3.0
        log(f"concurrency: {n} x {runtime}: {ok} x 200 in {burst['wall_s']:.2f} s")
        table.append(
            [
                f"{n} concurrent calls to a 1 s async function, {runtime}",
                f"{ok}/{n} x 200 in {burst['wall_s']:.2f} s; gateway {burst['gateway_rss_mib']:.0f}"
                f" MiB, workers {burst['workers_rss_mib']:.0f} MiB",
                f"all 200, <= {limit} s",
                "yes" if ok == int(n) and burst["wall_s"] <= limit else "no",
            ]
        )
    ceiling = results["ceiling_rps"]
    for runtime, figures in results["throughput"].items():
        table.append(
            [
                f"trivial async function, {runtime}, c=32",
                f"{figures['rps'] / ceiling:.2f} of bare hypercorn ({figures['rps']:,.0f} vs"
                f" {ceiling:,.0f} req/s), p50 {figures['p50_ms']:.1f} ms",
                "(reported)",
                "",
            ]
        )
    return table
