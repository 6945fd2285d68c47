"""Shared fixtures: build projects, run the real `flux` command, start a real gateway."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import coredis
import pytest
from redisserver import RedisServer, redis_server

from fluxgw.runtime.discovery import find_runtime
from fluxgw.state import StateDir
from fluxgw.tracestore import TraceStore
from fluxgw.tracing import TraceNotFound, TraceRecord

# node and deno, for parametrize: skipped where a runtime is missing on a laptop, but never in
# CI (CI=true), where scripts/setup installs both and a skip would hide a broken install.
JS_RUNTIMES = [
    pytest.param(
        runtime,
        marks=pytest.mark.skipif(
            find_runtime(runtime) is None and not os.environ.get("CI"),
            reason=f"{runtime} not installed (scripts/setup installs it)",
        ),
    )
    for runtime in ("node", "deno")
]

T = TypeVar("T")

# The event loops the gateway runs on. Async tests run on trio (the default loop) unless
# marked with BOTH_LOOPS; end-to-end tests marked with it take a `loop` argument and pass it to
# serve(..., loop=loop), i.e. `flux serve --loop LOOP`.
LOOPS = ("trio", "asyncio")
BOTH_LOOPS = pytest.mark.both_loops  # on a module or test: its async tests run on each loop
SERVER_LOOPS = pytest.mark.parametrize("loop", LOOPS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_loops") and (
        "anyio_backend" in metafunc.fixturenames
    ):
        metafunc.parametrize("anyio_backend", LOOPS)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
async def tasks() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group for background tasks of one test, cancelled when the test ends."""
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


def poll_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
    """Wait until ``predicate()`` is truthy and return it; fail the test after ``timeout``.

    Tests wait on what a user can observe, never for a fixed time (see wait_until for async
    tests)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout:g} s: {predicate}")
        time.sleep(interval)
    return value


async def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
    """:func:`poll_until` for async tests: checks between sleeps of the event loop."""
    with anyio.fail_after(timeout):
        while not (value := predicate()):
            await anyio.sleep(interval)
    return value


FLUX = str(Path(sys.executable).with_name("flux"))
READY = re.compile(r"serving .* at (https?://\S+)")


def write_function(
    project: Path, name: str, code: str, *, runtime: str = "python", **config: object
) -> Path:
    """Create functions/<name>/ with a flux.json and its entry file."""
    entry = {"python": "main.py", "node": "index.js", "deno": "index.ts"}[runtime]
    folder = project / "functions" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flux.json").write_text(json.dumps({"name": name, "runtime": runtime, **config}))
    (folder / entry).write_text(code)
    return folder


def flux(
    project: Path | None,
    *args: str,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `flux` command."""
    command = [FLUX, *(("--project", str(project)) if project else ()), *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}: {result.stderr}")
    return result


def key_for(project: Path, name: str = "k", *extra: str) -> str:
    """A new API key from the real `flux api-keys create`."""
    return flux(project, "api-keys", "create", "--name", name, *extra).stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class RunningGateway:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.output: list[str] = []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            kill_group(self.process)


async def trace_of(project: Path, request_id: str) -> TraceRecord:
    """The stored trace of ``request_id``, once the gateway's trace writer has written it."""
    store = TraceStore(StateDir(project).traces_db)
    with anyio.fail_after(10):
        while True:
            with contextlib.suppress(TraceNotFound):
                return store.get(request_id)
            await anyio.sleep(0.1)


def kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serve(
    project: Path,
    *args: str,
    command: str = "serve",
    env: dict[str, str] | None = None,
    loop: str = "trio",
) -> Iterator[RunningGateway]:
    """Start `flux serve --port 0 --loop LOOP` (its own process group); wait for its ready line."""
    process = subprocess.Popen(
        [FLUX, "--project", str(project), command, "--port", "0", "--loop", loop, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    url = None
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = READY.search(line)
        if match:
            url = match.group(1)
            break
    if url is None:
        kill_group(process)
        process.wait()
        raise AssertionError("gateway did not start:\n" + "".join(lines))
    gateway = RunningGateway(process, url)
    gateway.output = lines
    # Keep draining its output so a chatty gateway never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    try:
        yield gateway
    finally:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        kill_group(process)
        process.wait()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder (functions/ exists)."""
    root = tmp_path / "proj"
    (root / "functions").mkdir(parents=True)
    return root


class PageServer:
    """Serves a page on its own loopback origin and collects what it POSTs back."""

    def __init__(self, page: str, tls: tuple[Path, Path] | None = None) -> None:
        self.reports: list[dict] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                outer.reports.append(json.loads(self.rfile.read(length)))
                outer.arrived.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:  # (certificate, key): an https origin
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for this test (docs/redis.md)."""
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
async def redis_client(redis: RedisServer) -> AsyncIterator[coredis.Redis]:
    """A coredis client connected to :func:`redis`."""
    client = coredis.Redis(host="127.0.0.1", port=redis.port, stream_timeout=5)
    async with client:
        yield client
