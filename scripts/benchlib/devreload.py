"""Save-to-served latency of `flux dev`: edit a function, time until the new code answers.

Part of scripts/bench; alone: `.venv/bin/python scripts/benchlib/devreload.py [EDITS]`. The clock
starts just before the file is written and stops at the first response carrying the new
version; polling every 5 ms adds at most that much. The project is on the team plan: at ~200
polls/s the free plan's limiter (60/min, burst 120) would answer 429 after two seconds, and
the figures would measure its one-token-per-second refill instead of the reload.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

FLUX = str(Path(sys.executable).with_name("flux"))
CODE = "def handler(request, ctx):\n    return {{'version': {n}}}\n"


def measure(edits: int = 20) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="flux-bench-dev-") as tmp:
        project = Path(tmp)
        folder = project / "functions" / "v"
        folder.mkdir(parents=True)
        (folder / "flux.json").write_text(
            json.dumps({"name": "v", "runtime": "python", "route": "/v", "method": "GET"})
        )
        (folder / "main.py").write_text(CODE.format(n=0))
        subprocess.run(
            [FLUX, "--project", tmp, "project", "update", "--plan", "team"],
            capture_output=True,
            text=True,
            check=True,
        )
        key = subprocess.run(
            [FLUX, "--project", tmp, "api-keys", "create", "--name", "bench"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        log = project / "dev.log"  # a file, not a pipe: nobody has to keep draining it
        with log.open("w") as sink:
            server = subprocess.Popen(
                [FLUX, "--project", tmp, "dev", "--port", "0"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = _wait_ready(log)
            headers = {"authorization": f"Bearer {key}"}
            latencies = []
            with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
                _wait_version(client, 0, limit=10)
                for n in range(1, edits + 1):
                    time.sleep(0.2)  # let the previous reload settle, as between real saves
                    started = time.perf_counter()
                    (folder / "main.py").write_text(CODE.format(n=n))
                    _wait_version(client, n, limit=10)
                    latencies.append((time.perf_counter() - started) * 1000)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
    return {
        "edits": edits,
        "median_ms": statistics.median(latencies),
        "p90_ms": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
        "max_ms": max(latencies),
    }


def _wait_ready(log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"serving .* at (http://\S+)", log.read_text())
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise RuntimeError("flux dev did not start:\n" + log.read_text())


def _wait_version(client: httpx.Client, n: int, *, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        response = client.get("/v")
        if response.status_code == 429:
            raise RuntimeError(f"rate limited, the figures would be meaningless: {response.text}")
        if response.status_code == 200 and response.json() == {"version": n}:
            return
        time.sleep(0.005)
    raise RuntimeError(f"version {n} was not served within {limit} s")


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=2))
