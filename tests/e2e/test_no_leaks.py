"""No process outlives the gateway (docs/reference.md#runtimes): workers, and the children they
spawn.

200 mixed requests across python, node and deno (functions that leave a ``sleep 60`` child
running when they return, that spawn one and then hang past their timeout, that crash with a
child alive; deno, which may not spawn, hangs and crashes without one), a redeploy while
serving, then SIGTERM. The gateway's process tree is sampled with psutil all along
(grandchildren included); afterwards none of those processes may remain.

A grandchild that leaves the worker's process group (``setsid``, ``start_new_session=True``,
``detached: true``) is not reached by the group kill; in the worker sandbox it still dies with
the sandbox's pid namespace. Without the sandbox that is a known limit, tested as such below.
"""

from __future__ import annotations

import collections
import contextlib
import random
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from conftest import flux, serve, write_function

from fluxgw.runtime.discovery import find_runtime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

PY_OK = "def handler(request, ctx):\n    return {'ok': True}\n"
# Children are told apart by a unique duration (``sleep 60.<random>``), not by pid: inside the
# worker sandbox a pid belongs to the sandbox's own pid namespace and means nothing outside.
PY_SPAWN = """
import random, subprocess
def handler(request, ctx):
    token = f"60.{random.randrange(10**9):09d}"
    subprocess.Popen(["sleep", token])  # left running on purpose
    return {"child": token}
"""
PY_SPAWN_HANG = """
import subprocess, time
def handler(request, ctx):
    subprocess.Popen(["sleep", "60"])
    time.sleep(60)
"""
PY_SPAWN_CRASH = """
import os, subprocess
def handler(request, ctx):
    subprocess.Popen(["sleep", "60"])
    os._exit(1)
"""
PY_ESCAPE = """
import random, subprocess
def handler(request, ctx):
    token = f"60.{random.randrange(10**9):09d}"
    child = subprocess.Popen(["sleep", token], start_new_session=True)
    return {"child": token, "pid": child.pid}
"""
JS_OK = "export default async function (req, ctx) { return { ok: true }; }\n"
NODE_SPAWN = """
import { spawn } from "node:child_process";
export default async function (req, ctx) {
  const token = "60." + String(Math.floor(Math.random() * 1e9)).padStart(9, "0");
  spawn("sleep", [token], { stdio: "ignore" });  // left running on purpose
  return { child: token };
}
"""
NODE_SPAWN_HANG = """
import { spawn } from "node:child_process";
export default async function (req, ctx) {
  spawn("sleep", ["60"], { stdio: "ignore" });
  await new Promise((resolve) => setTimeout(resolve, 60000));
}
"""
NODE_SPAWN_CRASH = """
import { spawn } from "node:child_process";
export default async function (req, ctx) {
  spawn("sleep", ["60"], { stdio: "ignore" });
  process.exit(1);
}
"""
# deno may not start processes at all (no --allow-run, docs/sandbox.md): its workers hang and
# crash here without a child, which still exercises their killing.
DENO_HANG = """
export default async function (req: Request, ctx: unknown) {
  await new Promise((resolve) => setTimeout(resolve, 60000));
}
"""
DENO_CRASH = """
export default async function (req: Request, ctx: unknown) {
  Deno.exit(1);
}
"""

FUNCTIONS: dict[str, tuple[str, str, dict]] = {
    "py_ok": ("python", PY_OK, {}),
    "py_spawn": ("python", PY_SPAWN, {}),
    # A sync handler serves one call per worker: up to 12 hanging calls can overlap (the
    # client's limit), so it gets that many workers, else the third overlapping call is a
    # correct 503 overloaded (docs/runtimes.md) instead of the 504 this test is about.
    "py_spawn_hang": ("python", PY_SPAWN_HANG, {"timeout": 1, "max_workers": 12}),
    "py_spawn_crash": ("python", PY_SPAWN_CRASH, {}),
    "node_ok": ("node", JS_OK, {}),
    "node_spawn": ("node", NODE_SPAWN, {}),
    "node_spawn_hang": ("node", NODE_SPAWN_HANG, {"timeout": 1}),
    "node_spawn_crash": ("node", NODE_SPAWN_CRASH, {}),
    "deno_ok": ("deno", JS_OK, {}),
    "deno_spawn_hang": ("deno", DENO_HANG, {"timeout": 1}),
    "deno_spawn_crash": ("deno", DENO_CRASH, {}),
}
EXPECTED = {"ok": 200, "spawn": 200, "spawn_hang": 504, "spawn_crash": 502}
# How often each function appears among the 200 requests (hangs cost a second each).
WEIGHTS = {"ok": 10, "spawn": 4, "spawn_hang": 1, "spawn_crash": 2}


def living(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie counts as gone (only its parent's wait() is missing)."""
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def sleeping(tokens: Iterable[str]) -> list[psutil.Process]:
    """Running ``sleep <token>`` processes, wherever they are in the process tree."""
    wanted = set(tokens)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        command = proc.info["cmdline"] or []
        if len(command) == 2 and command[0].endswith("sleep") and command[1] in wanted:
            found.append(proc)
    return living(found)


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while (alive := living(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def describe(procs: Iterable[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
    return "\n".join(lines)


class TreeSampler:
    """Every descendant of the gateway ever seen, by (pid, create time)."""

    def __init__(self, root: int) -> None:
        self.root = psutil.Process(root)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.names: dict[int, str] = {}
        self.commands: set[str] = set()

    def sample(self) -> list[psutil.Process]:
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for proc in children:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault((proc.pid, proc.create_time()), proc)
                if proc.pid not in self.names:
                    self.names[proc.pid] = proc.name()
                    self.commands.add(" ".join(proc.cmdline()))
        return children

    async def run(self, interval: float = 0.1) -> None:
        while True:
            self.sample()
            await anyio.sleep(interval)


def plan_requests(runtimes: list[str], count: int, seed: int) -> list[str]:
    names = [name for name, (rt, _, _) in FUNCTIONS.items() if rt in runtimes]
    weighted = [n for n in names for _ in range(WEIGHTS[n.split("_", 1)[1]])]
    rng = random.Random(seed)
    return [rng.choice(weighted) for _ in range(count)]


@pytest.mark.timing
async def test_no_process_survives_200_requests_a_redeploy_and_sigterm(project: Path) -> None:
    runtimes = ["python", *(rt for rt in ("node", "deno") if find_runtime(rt) is not None)]
    for name, (runtime, code, extra) in FUNCTIONS.items():
        if runtime in runtimes:
            write_function(project, name, code, runtime=runtime, route=f"/{name}", **extra)
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "team")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    statuses: list[tuple[str, int]] = []
    spawned: list[str] = []  # the `sleep 60.<token>` children functions reported

    with serve(project) as gw:
        sampler = TreeSampler(gw.process.pid)
        try:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                limit = anyio.Semaphore(12)

                async def call(name: str) -> None:
                    async with limit:
                        response = await client.post(f"/{name}", headers=auth)
                    statuses.append((name, response.status_code))
                    if response.status_code == 200 and "child" in response.json():
                        spawned.append(response.json()["child"])

                async def batch(count: int, seed: int) -> None:
                    async with anyio.create_task_group() as tasks:
                        for name in plan_requests(runtimes, count, seed):
                            tasks.start_soon(call, name)

                async def deployment() -> int:
                    return (await client.get("/_flux/health")).json()["deployment"]

                async with anyio.create_task_group() as outer:
                    outer.start_soon(sampler.run)
                    await batch(100, seed=4)
                    before_redeploy = list(sampler.seen.values())
                    assert living(before_redeploy), "expected workers and their children"
                    # Redeploy with requests in flight: old workers drain, then their process
                    # groups (with the children left running) must go.
                    version = await deployment()
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(batch, 50, 5)
                        await anyio.sleep(0.2)
                        await anyio.to_thread.run_sync(lambda: flux(project, "deploy"))
                        while await deployment() == version:
                            await anyio.sleep(0.05)
                    old_left = await anyio.to_thread.run_sync(wait_gone, before_redeploy, 5.0)
                    assert not old_left, "old generation left behind:\n" + describe(old_left)
                    await batch(50, seed=6)  # the new generation's workers and children
                    outer.cancel_scope.cancel()

            assert len(statuses) == 200
            wrong = [(n, s) for n, s in statuses if s != EXPECTED[n.split("_", 1)[1]]]
            assert not wrong, wrong
            assert len(spawned) > 10
            names = collections.Counter(sampler.names.values())
            missed = {t for t in spawned if not any(t in c for c in sampler.commands)}
            assert not missed, f"spawned children never seen in the tree walk: {missed}"
            assert all(names[rt] for rt in runtimes if rt != "python"), names
            print("processes seen in the gateway's tree:", dict(names))

            sampler.sample()
            tree = list(sampler.seen.values())
            assert living(tree), "expected warm workers before SIGTERM"
            assert gw.stop(signal.SIGTERM) == 0
            left = wait_gone(tree, 5.0)
            assert not left, "left behind after SIGTERM:\n" + describe(left)
            assert not sleeping(spawned)
        finally:
            for proc in living(sampler.seen.values()):  # never leak into the next test
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def test_a_grandchild_in_its_own_session_dies_with_the_sandbox(project: Path) -> None:
    """In the sandbox, the worker's pid namespace ends with it: even a grandchild that called
    setsid() (out of reach of the group kill) is gone after the gateway stops."""
    write_function(project, "escape", PY_ESCAPE, route="/escape")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    token = None
    try:
        with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
            response = client.post("/escape", headers={"authorization": f"Bearer {key}"})
            token = response.json()["child"]
            assert sleeping([token]), "the grandchild should be running"
            assert gw.stop(signal.SIGTERM) == 0
        deadline = time.monotonic() + 3
        while sleeping([token]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sleeping([token])
    finally:
        for proc in sleeping([token] if token else []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.mark.xfail(
    strict=True,
    reason="known limit without the sandbox: a grandchild that calls setsid() leaves "
    "the worker's process group, so the group kill does not reach it",
)
def test_a_grandchild_in_its_own_session_escapes_without_sandbox(project: Path) -> None:
    write_function(project, "escape", PY_ESCAPE, route="/escape")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    token = None
    try:
        with (
            serve(project, "--no-sandbox") as gw,
            httpx.Client(base_url=gw.url, timeout=30) as client,
        ):
            response = client.post("/escape", headers={"authorization": f"Bearer {key}"})
            token = response.json()["child"]
            assert gw.stop(signal.SIGTERM) == 0
        deadline = time.monotonic() + 3
        while sleeping([token]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sleeping([token])
    finally:
        for proc in sleeping([token] if token else []):
            with contextlib.suppress(psutil.Error):
                proc.kill()
