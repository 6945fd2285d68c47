"""Concurrent invocations (scripts/bench section ``concurrency``).

Per runtime: N calls at once (N = 100 and 1,000; quick: 100 and 300) to an async function that
awaits 1 s, at the default pool settings: statuses, wall time, peak RSS of the gateway and of
its workers; and the throughput of a trivial async function at c=32 (wrk), as a ratio of the
bare hypercorn app measured in the same run. The client is h2load, one connection per call
(its connection setup is part of the wall time, as for a real burst of clients).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from fluxgw.runtime.discovery import find_runtime

from . import servers
from .tls import h2load_path
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
            servers.write_function(root, f"{kind}_{runtime}", runtime, entry, code, timeout=10)
    return root, servers.deploy_on_team_plan(root)


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


def _status_counts(base: str, key: str, function: str) -> dict[int, int]:
    """The gateway's own count of answers per status for ``function`` (/_flux/metrics)."""
    status, body = servers.get(f"{base}/_flux/metrics", key)
    if status != 200:
        raise servers.BenchError(f"/_flux/metrics answered {status}")
    pattern = re.compile(
        rf'^flux_requests_total{{function="{re.escape(function)}",status="(\d+)"}} (\d+)', re.M
    )
    return {int(code): int(count) for code, count in pattern.findall(body.decode())}


def _burst(base: str, function: str, key: str, n: int) -> tuple[float, dict[int, int]]:
    """``n`` calls at once, one per connection, from h2load (C, one thread: the client's own
    cost stays small next to the gateway's); statuses as the gateway counted them (h2load's
    HTTP/1.1 parser cannot read h11's empty reason phrase)."""
    before = _status_counts(base, key, function)
    argv = [h2load_path(), "--h1", "-n", str(n), "-c", str(n), "-t", "1"]
    argv += ["-H", f"authorization: Bearer {key}", f"{base}/{function}"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
    except subprocess.TimeoutExpired:
        raise servers.BenchError(f"h2load {function}: not done within 120 s") from None
    match = re.search(r"finished in ([\d.]+)(ms|s),", out)
    if match is None:
        raise servers.BenchError(f"h2load output without its wall time:\n{out[-2000:]}")
    wall = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    after = _status_counts(base, key, function)
    statuses = {code: after[code] - before.get(code, 0) for code in after}
    answered = sum(statuses.values())
    if answered < n:
        statuses[0] = n - answered  # never answered (connection errors)
    return wall, {code: count for code, count in statuses.items() if count}


def measure(work: Path, runtimes: list[str], quick: bool, seconds: float) -> dict[str, Any]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    project, key = _project(work / "concurrency", runtimes)
    sizes = (100, 1000)  # quick too: each burst takes ~2 s
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
                    wall, statuses = _burst(base, f"wait_{runtime}", key, n)
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
