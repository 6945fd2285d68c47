"""Bench section "tls": HTTPS with HTTP/2 and HTTP/1.1, next to the bare hypercorn TLS ceiling.

HTTP/2: h2load (Debian nghttp2-client, `scripts/setup --bench`) sends 20,000 requests from 50
clients to `flux serve --tls` (a warm python function, team plan) and to the bare hello-world
app on hypercorn's trio worker with the same certificate. HTTP/1.1 over the same TLS: wrk at
50 connections against both (h2load's HTTP/1.1 parser counts every answer of h11 as failed:
h11 sends an empty reason phrase, `HTTP/1.1 200 `). All in this run; the gateway's rows must
have 0 failures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from . import servers
from .wrk import WrkResult, run_wrk

REQUESTS = 20_000
CLIENTS = 50


@attrs.frozen
class H2loadResult:
    requests: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    rps: float
    protocol: str


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def h2load_path() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise servers.BenchError("h2load is not installed: scripts/setup --bench (nghttp2-client)")
    return path


def run_h2load(url: str, *, key: str | None, requests: int = REQUESTS) -> H2loadResult:
    argv = [h2load_path(), "-n", str(requests), "-c", str(CLIENTS), "-t", "1"]
    if key:
        argv += ["-H", f"authorization: Bearer {key}"]
    try:
        out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=300).stdout
    except subprocess.TimeoutExpired:
        raise servers.BenchError(f"h2load {url}: not done within 300 s") from None
    return parse(out)


def parse(out: str) -> H2loadResult:
    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise servers.BenchError(f"h2load output without {pattern!r}:\n{out[-2000:]}")
        return float(match.group(1))

    protocol = re.search(r"Application protocol: (\S+)", out)
    return H2loadResult(
        requests=int(number(r"requests: (\d+) total")),
        succeeded=int(number(r"(\d+) succeeded")),
        failed=int(number(r"(\d+) failed")),
        errored=int(number(r"(\d+) errored")),
        timeout=int(number(r"(\d+) timeout")),
        status_2xx=int(number(r"status codes: (\d+) 2xx")),
        rps=number(r"finished in [\d.]+\w+, ([\d.]+) req/s"),
        protocol=protocol.group(1) if protocol else "?",
    )


def measure(quick: bool) -> dict[str, Any]:
    """Ceiling and gateway, h2 (h2load) and http/1.1 (wrk); one fresh key per gateway run."""
    h2load_path()
    requests = 2_000 if quick else REQUESTS
    seconds = 2 if quick else 3
    work = Path(tempfile.mkdtemp(prefix="flux-bench-tls-"))
    logs = work / "logs"
    logs.mkdir()
    saved = os.environ.get("FLUX_CA_DIR")
    os.environ["FLUX_CA_DIR"] = str(work / "ca")  # a CA of its own, not the user's
    try:
        from fluxgw.tls import local_certificate

        leaf = local_certificate()
        h2: dict[str, H2loadResult] = {}
        h1: dict[str, WrkResult] = {}
        port = servers.free_port()
        with servers.ceiling_server(port, logs, tls=(leaf.cert, leaf.key)).start():
            url = f"https://127.0.0.1:{port}/"
            h2["ceiling"] = _h2("bare hypercorn TLS, h2", url, None, requests)
            h1["ceiling"] = _h1("bare hypercorn TLS, http/1.1", url, None, seconds)
        project, keys = servers.make_project(work / "team", "team", ("h2", "h1"))
        port = servers.free_port()
        server = servers.gateway_server(project, port, logs, name="gateway-tls", extra=("--tls",))
        with server.start():
            url = f"https://127.0.0.1:{port}/py"
            h2["gateway"] = _h2("gateway -> python, h2", url, keys["h2"], requests)
            h1["gateway"] = _h1("gateway -> python, http/1.1", url, keys["h1"], seconds)
        return {"h2": h2, "h1": h1}
    finally:
        if saved is None:
            os.environ.pop("FLUX_CA_DIR", None)
        else:
            os.environ["FLUX_CA_DIR"] = saved
        shutil.rmtree(work, ignore_errors=True)


def _h2(label: str, url: str, key: str | None, requests: int) -> H2loadResult:
    run_h2load(url, key=key, requests=1_000)  # warm-up: workers, sessions
    result = run_h2load(url, key=key, requests=requests)
    log(
        f"{label:<32} {result.rps:8.0f} req/s  {result.succeeded}/{result.requests} ok  "
        f"failed {result.failed}  errored {result.errored}  2xx {result.status_2xx}  "
        f"(negotiated {result.protocol})"
    )
    if result.protocol != "h2":
        raise servers.BenchError(f"{label}: negotiated {result.protocol}, not h2")
    return result


def _h1(label: str, url: str, key: str | None, seconds: float) -> WrkResult:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    run_wrk(url, connections=CLIENTS, seconds=1, headers=headers)  # warm-up
    result = run_wrk(url, connections=CLIENTS, seconds=seconds, headers=headers)
    log(
        f"{label:<32} {result.rps:8.0f} req/s  {result.requests} requests  "
        f"non-2xx {result.non_2xx}  socket errors {result.socket_errors}"
    )
    return result


def section(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """scripts/bench's section "tls": summary rows [figure, measured, target, met?]."""
    return summary_rows(measure(s.quick))


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    h2, h1 = results["h2"], results["h1"]
    gw, ceiling = h2["gateway"], h2["ceiling"]
    bad = gw.requests - gw.status_2xx
    h1_bad = h1["gateway"].non_2xx + h1["gateway"].socket_errors
    return [
        [
            f"HTTPS h2, gateway -> python, h2load {gw.requests:,} req at c={CLIENTS}",
            f"{gw.rps:,.0f} req/s, {gw.rps / ceiling.rps:.2f} of the bare hypercorn TLS h2 "
            f"ceiling ({ceiling.rps:,.0f} req/s); {bad} failed or non-2xx",
            "0 failures",
            "yes" if bad == 0 else f"**no**: {bad} failed or non-2xx",
        ],
        [
            f"HTTPS http/1.1, gateway -> python, wrk c={CLIENTS}",
            f"{h1['gateway'].rps:,.0f} req/s, {h1['gateway'].rps / h1['ceiling'].rps:.2f} of the "
            f"bare hypercorn TLS http/1.1 ceiling ({h1['ceiling'].rps:,.0f} req/s); "
            f"h2 / http/1.1 through the gateway: {gw.rps / h1['gateway'].rps:.2f}",
            "0 failures",
            "yes" if h1_bad == 0 else f"**no**: {h1_bad} non-2xx or socket errors",
        ],
    ]
