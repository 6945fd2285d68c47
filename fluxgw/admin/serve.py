"""The dashboard's own listener: a socket bound before serving, hypercorn on the running loop.

The socket is bound up front (default 127.0.0.1:4001), so a busy port is known at once and
the login URL names the real port. The default port falls back to a free one when taken
(another gateway's dashboard, say); a port given with ``--dashboard-port`` must be free.
hypercorn then serves :class:`~fluxgw.admin.app.AdminApp` on that socket with the worker of
whichever event loop runs (trio or asyncio, as the gateway's own hypercorn next to it).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from hypercorn.config import Config

from ..errors import FluxError
from ..server import listen_socket, run_hypercorn
from ..state import StateDir
from . import handoff
from .app import AdminApp

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger("fluxgw.admin")

HOST = "127.0.0.1"  # loopback only: reach it from elsewhere through an SSH tunnel
DEFAULT_PORT = 4001


def _bind(port: int) -> socket.socket:
    return listen_socket(HOST, port)


class DashboardListener:
    """Binds at construction (errors are the user's to read); serves in :meth:`run`."""

    def __init__(self, gateway: Gateway, state: StateDir, port: int | None = None) -> None:
        try:
            self.socket = _bind(DEFAULT_PORT if port is None else port)
        except OSError as exc:
            if port is not None or exc.errno != errno.EADDRINUSE:
                raise FluxError(
                    f"cannot listen on {HOST}:{port} for the dashboard: {exc.strerror or exc} "
                    "(pick another --dashboard-port, or --no-dashboard)"
                ) from None
            self.socket = _bind(0)
        self.state = state
        self.app = AdminApp(gateway, state)
        self.url = self.app.bind(HOST, self.socket.getsockname()[1])

    def startup_line(self) -> str:
        return (
            f"Dashboard: {self.app.login_url()}  "
            "(one-time login link; 'flux dashboard' prints a fresh one)"
        )

    async def run(
        self,
        shutdown_wait: Callable[[], Awaitable[object]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until ``shutdown_wait()`` returns; open event streams end first."""
        config = Config()
        config.bind = [f"fd://{self.socket.detach()}"]  # hypercorn owns the socket from here
        config.graceful_timeout = 2.0
        config.keep_alive_timeout = 75
        config.accesslog = None
        config.include_server_header = False
        config.errorlog = logging.getLogger("hypercorn.error")

        async def stop() -> None:
            await shutdown_wait()
            self.app.close()

        await anyio.to_thread.run_sync(handoff.publish_listener, self.state, self.url)
        try:
            async with anyio.create_task_group() as group:
                await group.start(self.app.run)
                task_status.started()
                await run_hypercorn(self.app, config, stop)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(handoff.withdraw_listener, self.state)
