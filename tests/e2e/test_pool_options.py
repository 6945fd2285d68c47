"""Pool semantics wired through `flux serve` flags: pre-warm, max/min workers, idle reaping."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from conftest import flux, serve, write_function

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


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


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
        assert wait_for(lambda: len(workers(root)) == expected, 10), workers(root)
        prewarmed = workers(root)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            pids: list[int] = []

            async def one() -> None:
                response = await client.post("/slow", headers=auth)
                assert response.status_code == 200
                pids.append(response.json()["pid"])

            started = time.monotonic()
            async with anyio.create_task_group() as tasks:
                for _ in range(3):
                    tasks.start_soon(one)
            # --max-workers 1: one warm (pre-started) worker serves the three, one at a time
            assert len(set(pids)) == 1 and pids[0] in prewarmed
            assert time.monotonic() - started >= 0.85
        # --idle-timeout 1: every worker is stopped once idle for a second
        assert wait_for(lambda: not workers(root), 4), workers(root)


def test_min_workers_survive_idle_reaping(project: Path) -> None:
    make(project)
    args = ("--prewarm", "--min-workers", "1", "--idle-timeout", "0.3")
    with serve(project, *args) as gw:
        root = gw.process.pid
        expected = 2 if find_runtime("node") else 1
        assert wait_for(lambda: len(workers(root)) == expected, 10), workers(root)
        before = workers(root)
        time.sleep(1.5)  # several idle timeouts
        assert workers(root) == before


def test_bad_pool_flags_are_one_line_errors(project: Path) -> None:
    result = flux(project, "serve", "--max-workers", "2", "--min-workers", "3", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("flux: error:") and "--min-workers" in result.stderr
    assert "Traceback" not in result.stderr
