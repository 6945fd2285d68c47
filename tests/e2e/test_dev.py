"""`flux dev`: hot reload on save, bad changes keep the last good version, quick Ctrl-C."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import flux, poll_until, serve, write_function

V1 = "def handler(request, ctx):\n    return {'version': 1}\n"


def wait_for(client: httpx.Client, key: str, expected: object, limit: float) -> float:
    """Poll until the function answers ``expected``; returns the seconds it took."""
    started = time.monotonic()
    while True:
        response = client.get("/v", headers={"authorization": f"Bearer {key}"})
        assert response.status_code != 429, "rate limited: this would time the limiter"
        if response.status_code == 200 and response.json() == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < limit, f"still {response.status_code} {response.text}"
        time.sleep(0.01)


@pytest.mark.timing
def test_saved_change_is_served_quickly_and_bad_change_keeps_last_good(project: Path) -> None:
    folder = write_function(project, "v", V1, route="/v", method="GET")
    key = flux(project, "api-keys", "create", "--name", "dev").stdout.strip()
    with serve(project, command="dev") as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
        banner = "".join(gw.output)
        assert "/v" in banner and "api-keys create" in banner  # routing table + how to get a key
        wait_for(client, key, {"version": 1}, 5)
        latencies = []
        for version in range(2, 6):
            (folder / "main.py").write_text(V1.replace("1}", f"{version}}}"))
            latencies.append(wait_for(client, key, {"version": version}, 3))
        print("save-to-served seconds:", latencies)
        assert max(latencies) < 0.5, latencies  # every save, not just the median (~0.1 s)

        (folder / "flux.json").write_text(
            json.dumps({"name": "v", "runtime": "python", "route": "/v", "method": "GETT"})
        )
        # the refusal is printed once the watcher has seen the change; the old version serves on
        poll_until(lambda: any("GETT" in line and "flux.json" in line for line in gw.output))
        assert client.get("/v", headers={"authorization": f"Bearer {key}"}).json() == {"version": 5}

        (folder / "flux.json").write_text(
            json.dumps({"name": "v", "runtime": "python", "route": "/v", "method": "GET"})
        )
        (folder / "main.py").write_text(V1.replace("1}", "6}"))
        wait_for(client, key, {"version": 6}, 3)

        started = time.monotonic()
        assert gw.stop(signal.SIGINT) == 0
        print("stop seconds:", time.monotonic() - started)
        assert time.monotonic() - started < 0.5
