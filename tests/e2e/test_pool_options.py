"""Pool semantics wired through `flux serve` flags: pre-warm, max/min workers, idle reaping."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from conftest import flux, poll_until, serve, write_function

from fluxgw.runtime.discovery import find_runtime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SLOW = """
import os, time
def handler(request, ctx):
    time.sleep(0.3)
    return {"pid": os.getpid()}
"""
NODE = "export default async function () { return { pid: process.pid }; }\n"


def workers(root: int) -> dict[int, str]:
    """pid -> name of the gateway's worker processes (its direct children)."""
    out = {}
    for child in psutil.Process(root).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out[child.pid] = child.name()
        except psutil.NoSuchProcess:
            pass
    return out


def worker_pid(project: Path, request_id: str) -> int:
    """The worker pid in a request's trace (traces are written a moment after the answer)."""

    def runtime_span() -> dict | None:
        shown = flux(project, "trace", request_id, "--json", check=False)
        if shown.returncode != 0:
            return None
        spans = {span["name"]: span for span in json.loads(shown.stdout)["spans"]}
        return spans["runtime"]

    return int(poll_until(runtime_span, 10, 0.1)["attributes"]["worker_pid"])


def make(project: Path) -> str:
    write_function(project, "slow", SLOW, route="/slow")
    if find_runtime("node"):
        write_function(project, "hi", NODE, runtime="node", route="/hi")
    flux(project, "deploy")
    return flux(project, "api-keys", "create", "--name", "k").stdout.strip()


async def test_prewarm_max_workers_and_idle_reaping(project: Path) -> None:
    key = make(project)
    auth = {"authorization": f"Bearer {key}"}
    expected = 2 if find_runtime("node") else 1
    with serve(project, "--prewarm", "--max-workers", "1", "--idle-timeout", "1") as gw:
        root = gw.process.pid
        poll_until(lambda: len(workers(root)) == expected, 10)
        prewarmed = workers(root)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            request_ids: list[str] = []

            async def one() -> None:
                response = await client.post("/slow", headers=auth)
                assert response.status_code == 200
                request_ids.append(response.headers["x-request-id"])

            started = time.monotonic()
            async with anyio.create_task_group() as tasks:
                for _ in range(3):
                    tasks.start_soon(one)
            assert time.monotonic() - started >= 0.85
            # --max-workers 1: one warm (pre-started) worker serves the three, one at a time.
            # Its pid as the gateway knows it (the trace's), not os.getpid(): inside the worker
            # sandbox that is a pid of the sandbox's own namespace.
            pids = [worker_pid(project, rid) for rid in request_ids]
            assert len(set(pids)) == 1 and pids[0] in prewarmed
        # --idle-timeout 1: every worker is stopped once idle for a second
        poll_until(lambda: not workers(root), 4)


async def test_min_workers_survive_idle_reaping(project: Path) -> None:
    key = make(project)
    args = ("--prewarm", "--min-workers", "1", "--idle-timeout", "0.3")
    with serve(project, *args) as gw:
        root = gw.process.pid
        expected = 2 if find_runtime("node") else 1
        poll_until(lambda: len(workers(root)) == expected, 10)
        before = workers(root)
        # Two calls at once need a second python worker: above min_workers, so one of the two
        # is reaped once idle past the timeout.
        request_ids: list[str] = []
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

            async def call() -> None:
                answer = await client.post("/slow", headers={"authorization": f"Bearer {key}"})
                request_ids.append(answer.headers["x-request-id"])

            async with anyio.create_task_group() as tasks:
                for _ in range(2):
                    tasks.start_soon(call)
        pids = {worker_pid(project, rid) for rid in request_ids}
        assert len(pids) == 2  # a second worker ran one of them
        # back to min_workers (which of the two stays is the pool's choice), never below it
        poll_until(lambda: len(workers(root)) == expected, 10)
        assert sorted(workers(root).values()) == sorted(before.values())


def test_bad_pool_flags_are_one_line_errors(project: Path) -> None:
    result = flux(project, "serve", "--max-workers", "2", "--min-workers", "3", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("flux: error:") and "--min-workers" in result.stderr
    assert "Traceback" not in result.stderr
