"""The cost of the request log: `flux serve` with and without `--log-requests` (docs/logs.md).

Part of scripts/bench (section ``termlog``). The same project (team plan, a python function
that prints one line per call, so every request has an output line to log) is served three
times: without the log (the baseline of the ratios), with ``--log-requests`` and with
``--log-format json``. The gateway's stdout goes to a file in every case, as it would under a
process supervisor: a pipe the bench had to drain would measure the drain, not the gateway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import servers
from .wrk import WrkResult

PRINTS = 'def handler(request, ctx):\n    print("handled")\n    return {"ok": True}\n'
VARIANTS = (
    ("off", ()),
    ("text", ("--log-requests",)),
    ("json", ("--log-format", "json")),
)
CONNECTIONS = 32

Measure = Callable[[str, str, int, str], WrkResult]  # (label, url, connections, key)


def make_project(root: Path) -> tuple[Path, dict[str, str]]:
    folder = root / "functions" / "prints"
    folder.mkdir(parents=True)
    spec = {"name": "prints", "runtime": "python", "method": "GET", "route": "/prints"}
    (folder / "flux.json").write_text(json.dumps(spec))
    (folder / "main.py").write_text(PRINTS)
    servers.flux(root, "deploy")
    servers.flux(root, "project", "update", "--plan", "team")
    names = [name for name, _ in VARIANTS]
    keys = {
        name: servers.flux(root, "api-keys", "create", "--name", name).strip() for name in names
    }
    return root, keys


@contextmanager
def gateway(project: Path, args: tuple[str, ...], log_file: Path) -> Iterator[str]:
    """`flux serve` with stdout to ``log_file``; yields its URL once it answers health."""
    port = servers.free_port()
    with log_file.open("w") as sink:
        proc = subprocess.Popen(
            [servers.FLUX, "--project", str(project), "serve", "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if servers.get(url + "/_flux/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise servers.BenchError(f"flux serve {' '.join(args)} did not start ({log_file})")
            time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(work: Path, run: Measure) -> dict[str, Any]:
    """req/s at c=32 for each variant; ``lines`` counts what the logging ones wrote."""
    project, keys = make_project(work / "termlog")
    out: dict[str, Any] = {"runs": {}, "lines": {}}
    for name, args in VARIANTS:
        log_file = work / f"termlog-{name}.log"
        with gateway(project, args, log_file) as url:
            status, body = servers.get(url + "/prints", keys[name])
            if status != 200:
                raise servers.BenchError(f"termlog {name}: {status} {body[:200]!r}")
            out["runs"][name] = run(f"serve, log {name}", url + "/prints", CONNECTIONS, keys[name])
        out["lines"][name] = sum(1 for _ in log_file.open(errors="replace"))
    return out


def rows(result: dict[str, Any]) -> list[list[str]]:
    """Summary rows: throughput with the log on, as a ratio of the same gateway without it."""
    runs = result["runs"]
    off = runs["off"].rps
    out = []
    for name, label in (("text", "--log-requests"), ("json", "--log-format json")):
        on = runs[name].rps
        ratio = on / off if off else 0.0
        out.append(
            [
                f"flux serve {label} vs no log, python, c={CONNECTIONS}, req/s",
                f"{ratio:.2f} ({on:,.0f} vs {off:,.0f} req/s; {result['lines'][name]:,} lines)",
                ">= 0.8",
                "yes" if ratio >= 0.8 else f"**no**: {0.8 - ratio:.2f} short",
            ]
        )
    return out
