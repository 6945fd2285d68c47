"""hypercorn on anyio: start the gateway, handle signals, stop gracefully.

The event loop is trio (the default) or asyncio (``--loop asyncio``; with uvloop when it is
installed); everything but the choice of hypercorn's worker runs on anyio and is the same on
both. Shape of a run: one root task group holds the gateway's background tasks and hypercorn.
SIGINT or SIGTERM sets a shutdown event: hypercorn stops accepting, lets requests in flight
finish (up to ``grace_period``), then the background tasks are cancelled, which saves limiter
state and stops every worker process group. Exit code 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
import sniffio
from hypercorn.config import Config

from .admin.handoff import withdraw_listener
from .allocator import limit_malloc_arenas, release_free_memory
from .connguard import DEFAULT_MAX_CONNECTIONS, effective_limit, raise_open_file_limit
from .connguard import install as install_connection_cap
from .console import configure_logging, say, warn
from .errors import FluxError
from .gateway import Gateway, GatewayOptions
from .runtime.options import PoolOptions
from .runtime.sandbox import Sandbox, mark_non_dumpable
from .state import StateDir
from .store.config import load_store_config
from .tls import CertFiles

log = logging.getLogger("fluxgw.server")

Loop = Literal["trio", "asyncio"]
LOOPS: tuple[Loop, ...] = ("trio", "asyncio")  # trio is the default


@attrs.frozen
class ServerConfig:
    project_dir: Path
    host: str = "127.0.0.1"
    port: int = 4000
    dev: bool = False
    tracing: bool = True
    grace_period: float = 10.0
    access_log: bool = False
    pool: PoolOptions = attrs.Factory(PoolOptions)  # `flux dev` always pre-warms
    loop: Loop = "trio"
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # docs/limits.md
    reuse_port: bool = False  # one of `--workers N` processes (docs/redis.md)
    dashboard: bool = True  # the admin listener (docs/dashboard.md)
    dashboard_port: int | None = None  # None: 4001, or a free port when 4001 is taken
    log_requests: bool = False  # a line per request on stdout (`flux dev`: always)
    log_format: str = "text"  # or "json": one object per line (docs/logs.md)
    sandbox: bool = True  # bubblewrap around workers when it works here (docs/sandbox.md)
    dotenv: Path | None = None  # `flux dev`: functions/.env
    tls: CertFiles | None = None  # HTTPS with this certificate (docs/tls.md)


def hypercorn_config(
    host: str, port: int, grace_period: float, tls: CertFiles | None = None
) -> Config:
    from . import http2

    http2.install()
    config = http2.FluxHypercornConfig()
    if tls is not None:
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
        config.alpn_protocols = http2.ALPN
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = grace_period
    config.keep_alive_timeout = 75  # longer than common client pools' idle timeouts
    # hypercorn calls listen(backlog) again (default 100): 1,000 clients connecting at once
    # would see dropped SYNs and retry after 1-3 s (docs/runtimes.md, "Concurrency").
    config.backlog = 1024
    config.accesslog = None
    config.include_server_header = False  # do not advertise the server software and version
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def listen_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind and listen here, not in hypercorn: the same code for both of its workers (its
    asyncio ``serve`` does not report the bound address, needed for port 0), and a port in use
    fails before anything else starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024, reuse_port=reuse_port)


def _url(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def run_hypercorn(app: Any, config: Config, shutdown: Callable[[], Awaitable[Any]]) -> None:
    """hypercorn's worker for the running event loop: it has one per loop, not one on anyio."""
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown)
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=shutdown)


async def serve_gateway(
    gateway: Gateway,
    host: str,
    port: int,
    *,
    grace_period: float = 10.0,
    shutdown: anyio.Event,
    on_ready: Callable[[list[str]], None] | None = None,
    reuse_port: bool = False,
    tls: CertFiles | None = None,
    task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run gateway + hypercorn until ``shutdown`` is set; reports the bound URLs."""
    sock = listen_socket(host, port, reuse_port=reuse_port)
    binds = [_url(sock, tls is not None)]
    config = hypercorn_config(host, port, grace_period, tls)
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) it from here
    async with anyio.create_task_group() as background:
        await background.start(gateway.run)
        async with anyio.create_task_group() as http:
            http.start_soon(run_hypercorn, gateway, config, shutdown.wait)
            # The socket listens already: a client connecting now waits in its backlog.
            if on_ready:
                on_ready(binds)
            task_status.started(binds)
        # hypercorn has returned: requests in flight finished (or the grace period ran out).
        background.cancel_scope.cancel()


async def _main(config: ServerConfig) -> None:
    state = StateDir(config.project_dir)
    gateway = Gateway(
        state,
        GatewayOptions(
            tracing=config.tracing,
            pool=attrs.evolve(config.pool, prewarm=True) if config.dev else config.pool,
            disk_reserve=True,
            sandbox=config.sandbox,
            dotenv=config.dotenv,
        ),
    )
    await anyio.to_thread.run_sync(gateway.load)
    announce_sandbox(gateway.launcher.sandbox)
    dashboard = None
    if config.dashboard:
        from .admin.serve import DashboardListener

        dashboard = DashboardListener(gateway, state, config.dashboard_port)
    tune_garbage_collector()
    shutdown = anyio.Event()
    logging_requests = config.dev or config.log_requests

    def ready(binds: list[str]) -> None:
        url = binds[0] if binds else f"http://{config.host}:{config.port}"
        if dashboard is not None:
            say(dashboard.startup_line())
        say(f"serving {config.project_dir} at {url}")
        if config.dev:
            say(f"watching {config.project_dir / 'functions'}: saved changes are redeployed")
            say(f"get a key: flux --project {config.project_dir} api-keys create --name dev")
            say(f"then: curl -H 'Authorization: Bearer KEY' {url}/ROUTE")
        say("press Ctrl-C to stop" + ("; requests are logged below" if logging_requests else ""))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, shutdown)
        tasks.start_soon(collect_garbage_periodically)
        if logging_requests:
            from .requestlog import print_requests

            await tasks.start(
                functools.partial(print_requests, gateway.feed, log_format=config.log_format)
            )
        if config.dev:
            from .devreload import watch_and_redeploy

            tasks.start_soon(watch_and_redeploy, state, gateway, shutdown)
        if dashboard is not None:
            await tasks.start(dashboard.run, shutdown.wait)
        else:
            await anyio.to_thread.run_sync(withdraw_listener, state)
        await serve_gateway(
            gateway,
            config.host,
            config.port,
            grace_period=config.grace_period,
            shutdown=shutdown,
            on_ready=ready,
            reuse_port=config.reuse_port,
            tls=config.tls,
        )
        tasks.cancel_scope.cancel()


async def _watch_signals(shutdown: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if shutdown.is_set():
                continue
            say(f"stopping ({signal.Signals(signum).name}): finishing requests in flight")
            shutdown.set()


def tune_garbage_collector() -> None:
    """Fewer, cheaper collections on the request path.

    Every request allocates a few dozen short-lived containers; with the default gen-0
    threshold (700) that is a collection every few requests, each also walking the thousands
    of objects loaded at start-up. Freezing those and collecting gen 0 per 50,000 allocations
    gave +5-10% req/s on the 401 path (scripts/bench); memory between collections stays in
    the low megabytes.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


GC_INTERVAL = 30.0  # s between full collections (see collect_garbage_periodically)


async def collect_garbage_periodically(interval: float = GC_INTERVAL) -> None:
    """A full collection every ``interval`` seconds, to go with :func:`tune_garbage_collector`.

    Its gen-0 threshold counts objects allocated minus freed, and most per-request objects die
    by reference counting, so under steady load gen 0 filled only every few minutes and gen 2
    (50 x 100 of those) practically never. Meanwhile the reference cycles that do arise (a
    state file's JSON encoder, closed connections, cancel scopes) piled up: a 10-minute soak
    grew the gateway from 63 to 72 MiB. A full collection every 30 s keeps it flat (soak
    figures in BENCHMARKS.md, "Output flood and soak"); start-up objects are frozen, so one
    walks only the ~20,000 objects made since, in a few milliseconds.
    """
    while True:
        await anyio.sleep(interval)
        gc.collect()
        release_free_memory()  # what the collection freed, and what bursts left: allocator.py


@contextlib.contextmanager
def single_gateway(state: StateDir) -> Iterator[None]:
    """Hold .flux/gateway.lock while serving: one gateway per project folder.

    Limiter state, the async queue and key usage are owned by one process; a second gateway
    on the same folder would keep its own buckets (limits no longer exact) and re-queue the
    first one's running jobs. Refuse it with a clear message instead.
    """
    state.ensure()
    if load_store_config(state).redis is not None:
        yield  # on the Redis store, any number of gateways share one state (docs/redis.md)
        return
    path = state.root / "gateway.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FluxError(
                f"another flux gateway (pid {holder}) is already serving {state.project_dir}; "
                "stop it first (one gateway per project folder)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def announce_sandbox(sandbox: Sandbox) -> None:
    """Said once at start: whether functions run in the sandbox, and if not what that means."""
    if sandbox.enabled:
        say(f"workers run sandboxed ({sandbox.note})")
        return
    warn(
        f"workers run WITHOUT a sandbox ({sandbox.note}): a function can read what the "
        "gateway's user can read, .flux/ included (docs/sandbox.md)",
        once="sandbox",
    )


def backend(loop: Loop) -> dict[str, Any]:
    """``anyio.run`` arguments for ``loop``: asyncio runs on uvloop when it is installed."""
    if loop == "trio":
        return {"backend": "trio"}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {"backend": "asyncio"}
    return {"backend": "asyncio", "backend_options": {"use_uvloop": True}}


def run_server(config: ServerConfig) -> int:
    configure_logging(json_requests=config.log_format == "json")
    mark_non_dumpable()
    limit_malloc_arenas()  # before any thread allocates: see allocator.py
    failure: OSError | None = None
    if config.max_connections < 1:
        raise FluxError("--max-connections must be >= 1")
    install_connection_cap(effective_limit(config.max_connections, raise_open_file_limit()))
    with single_gateway(StateDir(config.project_dir)):
        try:
            anyio.run(_main, config, **backend(config.loop))
        except* OSError as group:
            failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        where = f"{config.host}:{config.port}"
        raise FluxError(f"cannot listen on {where}: {failure.strerror or failure}")
    say("stopped")
    return 0
