"""Start and stop the servers under test (as subprocesses) and build the benchmark projects."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
FLUX = str(VENV_BIN / "flux")

FUNCTIONS = {
    "python": (
        "hello_py",
        "/py",
        "main.py",
        'def handler(request, ctx):\n    return {"ok": True}\n',
    ),
    "node": (
        "hello_node",
        "/node",
        "index.js",
        "export default async function (req, ctx) { return { ok: true }; }\n",
    ),
    "deno": (
        "hello_deno",
        "/deno",
        "index.ts",
        "export default async function (req: Request, ctx: unknown) {\n  return { ok: true };\n}\n",
    ),
}


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flux(project: Path, *args: str) -> str:
    out = subprocess.run(
        [FLUX, "--project", str(project), *args], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise BenchError(f"flux {' '.join(args)} failed: {out.stderr.strip() or out.stdout}")
    return out.stdout


def write_function(root: Path, name: str, runtime: str, entry: str, code: str, **spec: Any) -> None:
    """One function folder under ``root/functions``: its flux.json (GET unless ``spec`` says
    otherwise) and its entry file."""
    folder = root / "functions" / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"name": name, "runtime": runtime, "method": "GET", **spec}
    (folder / "flux.json").write_text(json.dumps(config) + "\n")
    (folder / entry).write_text(code)


def deploy_on_team_plan(root: Path) -> str:
    """Deploy ``root``'s functions, put the project on the team plan; a fresh key."""
    flux(root, "deploy")
    flux(root, "project", "update", "--plan", "team")
    return flux(root, "api-keys", "create", "--name", "bench").strip()


def make_project(root: Path, plan: str, key_names: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A project with one hello function per runtime, deployed, on ``plan``, with one key per
    name: each scenario gets a fresh key, so an earlier run never drains a later one's bucket."""
    root.mkdir(parents=True, exist_ok=True)
    for runtime, (name, route, entry, source) in FUNCTIONS.items():
        folder = root / "functions" / name
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"name": name, "runtime": runtime, "method": "GET", "route": route}
        (folder / "flux.json").write_text(json.dumps(spec) + "\n")
        (folder / entry).write_text(source)
    flux(root, "deploy")
    flux(root, "project", "update", "--plan", plan)
    keys = {name: flux(root, "api-keys", "create", "--name", name).strip() for name in key_names}
    return root, keys


def get(url: str, key: str | None = None, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """A server subprocess that prints a readiness line; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], ready_text: str, log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.ready_text = ready_text
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> Server:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
                log.write(line)
                log.flush()
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise BenchError(
                    f"{self.name} not ready within {timeout:.0f} s (log: {self.log_path})"
                ) from None
            if line is None:
                self.stop()
                raise BenchError(f"{self.name} exited before it was ready (log: {self.log_path})")
            if self.ready_text in line:
                return self

    def stop(self, timeout: float = 15) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: the server and its workers
            proc.wait(timeout=5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ceiling_server(
    port: int, log_dir: Path, loop: str = "trio", tls: tuple[Path, Path] | None = None
) -> Server:
    app = Path(__file__).resolve().parent / "ceiling_app.py"
    # -P: the script's folder (benchlib, with its own jwt.py) must not shadow real packages
    argv = [sys.executable, "-P", str(app), str(port), loop, *(str(path) for path in tls or ())]
    return Server(f"ceiling-{loop}{'-tls' if tls else ''}", argv, "ceiling ready", log_dir)


def gateway_server(
    project: Path,
    port: int,
    log_dir: Path,
    *,
    tracing: bool = True,
    name: str = "gateway",
    loop: str = "trio",
    extra: tuple[str, ...] = (),
) -> Server:
    argv = [FLUX, "--project", str(project), "serve", "--port", str(port), "--loop", loop, *extra]
    if not tracing:
        argv.append("--no-tracing")
    return Server(name, argv, "flux: serving", log_dir)
