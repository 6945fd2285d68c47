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

import psutil

from . import servers
from .wrk import run_wrk

PRINTS = 'def handler(request, ctx):\n    print("handled")\n    return {"ok": True}\n'
VARIANTS = (
    ("off", ()),
    ("text", ("--log-requests",)),
    ("json", ("--log-format", "json")),
)
CONNECTIONS = 32


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
def gateway(project: Path, args: tuple[str, ...], log_file: Path) -> Iterator[tuple[str, int]]:
    """`flux serve` with stdout to ``log_file``; yields its URL and pid once it is healthy."""
    port = servers.free_port()
    with log_file.open("w") as sink:
        proc = subprocess.Popen(
            [
                servers.FLUX,
                "--project",
                str(project),
                "serve",
                "--port",
                str(port),
                "--no-dashboard",
                *args,
            ],
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
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """Summary rows [figure, measured, target, met?]: req/s and the gateway's own CPU time
    per request (far less sensitive than req/s to what else runs on a shared machine) with
    each log variant, as ratios of the same gateway without the log."""
    work.mkdir(parents=True, exist_ok=True)
    project, keys = make_project(work / "project")
    rps: dict[str, float] = {}
    cpu: dict[str, float] = {}
    lines: dict[str, int] = {}
    for name, args in VARIANTS:
        log_file = work / f"serve-{name}.log"
        headers = {"Authorization": f"Bearer {keys[name]}"}
        with gateway(project, args, log_file) as (url, pid):
            status, body = servers.get(url + "/prints", keys[name])
            if status != 200:
                raise servers.BenchError(f"termlog {name}: {status} {body[:200]!r}")
            run_wrk(url + "/prints", connections=CONNECTIONS, seconds=s.warmup, headers=headers)
            process = psutil.Process(pid)
            rps[name], cpu[name] = 0.0, float("inf")
            for _ in range(max(1, s.repeats)):
                before = sum(process.cpu_times()[:2])
                run = run_wrk(
                    url + "/prints", connections=CONNECTIONS, seconds=s.seconds, headers=headers
                )
                used = sum(process.cpu_times()[:2]) - before
                rps[name] = max(rps[name], run.rps)
                cpu[name] = min(cpu[name], used / max(1, run.requests) * 1e6)
            log(f"termlog: log {name:<4}  {rps[name]:8.0f} req/s  {cpu[name]:6.0f} us CPU/req")
        lines[name] = sum(1 for _ in log_file.open(errors="replace"))
    if lines["text"] < 2 * lines["off"] + 100:
        raise servers.BenchError(f"--log-requests wrote only {lines['text']} lines")
    out = []
    for name, label in (("text", "--log-requests"), ("json", "--log-format json")):
        ratio = rps[name] / rps["off"] if rps["off"] else 0.0
        extra = cpu[name] / cpu["off"] - 1
        out.append(
            [
                f"flux serve {label} vs no log, python, c={CONNECTIONS}",
                f"{ratio:.2f} req/s ({rps[name]:,.0f} vs {rps['off']:,.0f}); "
                f"gateway CPU/request {extra:+.0%} ({cpu[name]:.0f} vs {cpu['off']:.0f} us)",
                ">= 0.8 req/s",
                "yes" if ratio >= 0.8 else f"**no**: {0.8 - ratio:.2f} short",
            ]
        )
    return out
