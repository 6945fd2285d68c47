"""Streamed answers (scripts/bench section ``streaming``).

Per runtime: a function streams 100 MB (quick: 20 MB) in 64 KiB chunks; the client reads it
through the gateway and records the time to first byte, the throughput and the gateway's peak
RSS (it must stay flat: the gateway holds at most one flow-control window per stream). The
bare stack is hypercorn alone streaming the same bytes (stream_app.py), measured in the same
run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from fluxgw.runtime.discovery import find_runtime

from . import servers

CHUNK = 64 * 1024
CODE = {
    "python": (
        "main.py",
        "def handler(request, ctx):\n"
        "    n = int(request['query']['mb']) * 16\n"
        "    chunk = b'x' * 65536\n"
        "    return (chunk for _ in range(n))\n",
    ),
    "node": (
        "index.js",
        "export default async function (req) {\n"
        "  let n = Number(new URL(req.url).searchParams.get('mb')) * 16;\n"
        "  const chunk = new Uint8Array(65536).fill(120);\n"
        "  const body = new ReadableStream({ pull(c) { if (n-- > 0) c.enqueue(chunk);"
        " else c.close(); } });\n"
        "  return new Response(body);\n}\n",
    ),
}
CODE["deno"] = ("index.ts", CODE["node"][1])


def _read(url: str, key: str | None, pid: int | None) -> dict[str, float]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    process = psutil.Process(pid) if pid else None
    peak = idle = process.memory_info().rss if process else 0
    size = 0
    started = time.perf_counter()
    first = None
    with httpx.Client(timeout=120) as client, client.stream("GET", url, headers=headers) as r:
        r.raise_for_status()
        for data in r.iter_raw(1 << 20):
            if first is None:
                first = time.perf_counter() - started
            size += len(data)
            if process is not None and size % (8 << 20) < len(data):
                peak = max(peak, process.memory_info().rss)
    elapsed = time.perf_counter() - started
    return {
        "ttfb_ms": (first or 0.0) * 1000,
        "mb_per_s": size / elapsed / 1e6,
        "bytes": size,
        "rss_growth_mib": (peak - idle) / 2**20,
    }


def measure(work: Path, runtimes: list[str], quick: bool) -> dict[str, Any]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mb = 20 if quick else 100
    root = work / "streaming"
    for runtime in runtimes:
        entry, code = CODE[runtime]
        folder = root / "functions" / f"s_{runtime}"
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"name": f"s_{runtime}", "runtime": runtime, "method": "GET"}
        (folder / "flux.json").write_text(json.dumps(spec))
        (folder / entry).write_text(code)
    servers.flux(root, "deploy")
    servers.flux(root, "project", "update", "--plan", "team")
    key = servers.flux(root, "api-keys", "create", "--name", "bench").strip()
    out: dict[str, Any] = {"mb": mb, "gateway": {}}
    port = servers.free_port()
    app = Path(__file__).resolve().parent / "stream_app.py"
    # -P: the script's folder (benchlib, with its own jwt.py) must not shadow real packages
    argv = [sys.executable, "-P", str(app), str(port)]
    bare = servers.Server("stream-bare", argv, "ready", logs)
    with bare.start():
        _read(f"http://127.0.0.1:{port}/?mb=1", None, None)
        out["bare"] = _read(f"http://127.0.0.1:{port}/?mb={mb}", None, None)
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    with servers.gateway_server(root, port, logs, name="gateway-streaming").start() as gw:
        for runtime in runtimes:
            _read(f"{base}/s_{runtime}?mb=1", key, None)  # warm
            out["gateway"][runtime] = _read(f"{base}/s_{runtime}?mb={mb}", key, gw.pid)
    return out


def section(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """Summary rows [figure, measured, target, met?] for scripts/bench's ``streaming``."""
    runtimes = [rt for rt in ("python", "node", "deno") if find_runtime(rt)]
    results = measure(work, runtimes, s.quick)
    bare = results["bare"]
    log(f"streaming: bare hypercorn {bare['mb_per_s']:.0f} MB/s")
    table: list[list[str]] = []
    for runtime, r in results["gateway"].items():
        flat = r["rss_growth_mib"] < 10
        table.append(
            [
                f"{results['mb']} MB stream through the gateway, {runtime}",
                f"{r['mb_per_s'] / bare['mb_per_s']:.2f} of bare hypercorn ({r['mb_per_s']:.0f} vs"
                f" {bare['mb_per_s']:.0f} MB/s); first byte {r['ttfb_ms']:.1f} ms (bare"
                f" {bare['ttfb_ms']:.1f}); gateway RSS +{r['rss_growth_mib']:.1f} MiB",
                "gateway RSS flat (< +10 MiB)",
                "yes" if flat else "no",
            ]
        )
    return table
