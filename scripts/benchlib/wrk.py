"""Run wrk (the load generator) against a URL and read its results from a Lua ``done`` hook.

The hook only runs once, after the run, so it costs nothing per request; it prints one line of
JSON with the request count, errors (``status`` = non-2xx/3xx answers) and latency percentiles
in microseconds, straight from wrk's HDR histogram.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs

_MARK = "BENCHJSON "
_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
    "\"status\":%d,\"timeout\":%d,\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"mean\":%.1f," ..
    "\"max\":%.0f}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


class WrkError(RuntimeError):
    pass


@attrs.frozen
class WrkResult:
    connections: int
    requests: int
    seconds: float
    non_2xx: int  # answers with a status outside 2xx/3xx
    socket_errors: int  # connect + read + write + timeout
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise WrkError("wrk is not installed: run scripts/setup --bench (apt-get install wrk)")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "wrk (unknown version)"


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """One wrk run; ``threads`` is 1 by default so wrk takes one of the two cores, not both."""
    with tempfile.TemporaryDirectory(prefix="flux-wrk-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(_LUA)
        argv = [
            wrk_path(),
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
        ]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise WrkError(f"wrk did not finish within {seconds + 30:.0f} s") from None
    for line in out.stdout.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK) :])
            break
    else:
        raise WrkError(f"wrk failed (exit {out.returncode}): {out.stderr.strip() or out.stdout}")
    return WrkResult(
        connections=connections,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non_2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        mean_ms=data["mean"] / 1000,
    )
