"""Bench section ``flood``: a function printing 200 MB, and what it does to the gateway.

Per runtime (python; node and deno when installed): ``flux serve`` with a trivial function
(``/ping``) and one that prints 200 MiB (200 x 1,024 lines of 1 KiB, then one 50 MiB line) in
one call. Measured: the gateway process's RSS when idle and its peak while the flood runs
(sampled every 20 ms in a thread), and the median latency of ``/ping`` calls before and during
the flood. Targets (issue 10): RSS within +50 MiB of idle, latency within 2x of baseline.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from fluxgw.runtime.discovery import find_runtime

from . import servers

PYTHON = """import os
def handler(request, ctx):
    line = "y" * 1023
    for _ in range(200 * 1024):
        print(line)
    os.write(1, b"z" * (50 * 1024 * 1024) + b"\\n")
    return "flooded"
"""
JS = """export default async function () {
  const line = "y".repeat(1023);
  for (let i = 0; i < 200 * 1024; i++) console.log(line);
  console.log("w".repeat(50 * 1024 * 1024));
  return "flooded";
}
"""
ENTRY = {"python": ("main.py", PYTHON), "node": ("index.js", JS), "deno": ("index.ts", JS)}


def _project(root: Path, runtimes: list[str]) -> tuple[Path, str]:
    ping = "def handler(request, ctx):\n    return 1\n"
    servers.write_function(root, "ping", "python", "main.py", ping, timeout=30)
    for runtime in runtimes:
        entry, code = ENTRY[runtime]
        servers.write_function(
            root, f"flood_{runtime}", runtime, entry, code, timeout=30, memory=1024
        )
    return root, servers.deploy_on_team_plan(root)


def _latency(client: httpx.Client, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        if client.get("/ping").status_code != 200:
            raise servers.BenchError("/ping did not answer 200")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _call(base: str, headers: dict[str, str], runtime: str, answers: list[int]) -> None:
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        answers.append(client.get(f"/flood_{runtime}").status_code)


def measure(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """Summary rows [figure, measured, target, met?]."""
    runtimes = [rt for rt in ("python", "node", "deno") if find_runtime(rt)]
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    project, key = _project(work / "flood", runtimes)
    port = servers.free_port()
    rows: list[list[str]] = []
    with servers.gateway_server(project, port, logs, name="gateway-flood").start() as gw:
        gateway = psutil.Process(gw.pid)
        headers = {"authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            _latency(client, 10)  # warm
            for runtime in runtimes:
                idle = gateway.memory_info().rss
                baseline = _latency(client, 30)
                peak = idle
                answers: list[int] = []

                thread = threading.Thread(target=_call, args=(base, headers, runtime, answers))
                thread.start()
                during: list[float] = []
                while thread.is_alive():
                    peak = max(peak, gateway.memory_info().rss)
                    during.append(_latency(client, 3))
                thread.join()
                if answers != [200]:
                    raise servers.BenchError(f"the {runtime} flood answered {answers}")
                growth = (peak - idle) / 2**20
                slower = statistics.median(during) / baseline if during else 1.0
                log(
                    f"flood: {runtime}: gateway RSS {idle / 2**20:.0f} -> peak "
                    f"{peak / 2**20:.0f} MiB; /ping p50 x{slower:.2f} during the flood"
                )
                rows.append(
                    [
                        f"gateway RSS while a {runtime} function prints 200 MB",
                        f"+{growth:.1f} MiB (idle {idle / 2**20:.0f}, peak {peak / 2**20:.0f})",
                        "<= +50 MiB",
                        "yes" if growth <= 50 else f"**no**: +{growth - 50:.1f} MiB over",
                    ]
                )
                rows.append(
                    [
                        f"other requests' p50 during that {runtime} flood vs before",
                        f"x{slower:.2f} ({statistics.median(during) * 1000:.2f} vs "
                        f"{baseline * 1000:.2f} ms, {len(during)} samples)",
                        "<= x2",
                        "yes" if slower <= 2 else f"**no**: x{slower:.2f}",
                    ]
                )
    return rows
