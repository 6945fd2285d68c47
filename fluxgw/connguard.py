"""Client connections: a cap on how many, one connection's failure contained, and the
open-file limit raised at start.

Each connection holds a descriptor; so do workers' pipes, SQLite and the state files. Without
a cap, enough idle connections exhaust the process's descriptors and everything else starts
failing (workers cannot start, traces cannot be written). With it, connection number
``limit + 1`` gets a complete ``503 too_many_connections`` JSON answer and is closed, and the
gateway keeps working for the connections it has. See docs/limits.md.

An exception escaping one connection's handler must not stop the server: with hypercorn
0.18 on trio, a request with ``Connection: close`` followed by a pipelined request makes h11
raise "Got data when expecting EOF" while the response is being sent, hypercorn's error answer
then collides with that send (``trio.BusyResourceError``), and the exception used to propagate
out of hypercorn's listener and stop the gateway (hypercorn issue #203). The wrapper catches
it, logs it once per kind, and the connection is closed; every other connection carries on.

hypercorn has no connection limit of its own and no hook to add one: its trio and asyncio
workers build one ``TCPServer`` per accepted connection from a module-level name. We wrap that
class (both workers, once per process); the wrapper only counts, refuses and contains,
everything else is hypercorn's own code. Checked against hypercorn 0.16-0.18 (pyproject pins
< 0.19).
"""

from __future__ import annotations

import contextlib
import logging
import resource
from typing import Any

import anyio
import orjson

from .tracing import new_request_id

log = logging.getLogger("fluxgw.connections")

DEFAULT_MAX_CONNECTIONS = 10_000
FILES_PER_PROCESS_RESERVE = 256  # descriptors kept for workers, SQLite, state files, logs
_DRAIN_S = 0.5  # read what the refused client sent, so closing does not reset the answer


class _Count:
    limit = DEFAULT_MAX_CONNECTIONS
    active = 0
    refused = 0
    failed = 0
    failures_seen: set[str] = set()


COUNT = _Count()


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def effective_limit(requested: int, open_files: int) -> int:
    """The cap actually applied: what was asked, but never more than the descriptors left
    after the reserve (a cap above that would not protect anything)."""
    return max(1, min(requested, open_files - FILES_PER_PROCESS_RESERVE))


def refusal() -> bytes:
    """The complete HTTP/1.1 answer a connection over the cap gets."""
    body = orjson.dumps(
        {
            "error": "too_many_connections",
            "message": f"the gateway already serves {COUNT.limit} connections; retry shortly",
            "request_id": new_request_id(),
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def install(limit: int) -> None:
    """Cap hypercorn's connections at ``limit`` (both workers); idempotent."""
    COUNT.limit = limit
    import hypercorn.asyncio.run as asyncio_run
    import hypercorn.trio.run as trio_run

    for module, refuse in ((trio_run, _refuse_trio), (asyncio_run, _refuse_asyncio)):
        server = module.TCPServer
        if not getattr(server, "_fluxgw_capped", False):
            module.TCPServer = _capped(server, refuse)  # type: ignore[attr-defined]


def _capped(base: type, refuse: Any) -> type:
    class CappedTCPServer(base):
        _fluxgw_capped = True

        async def run(self) -> None:
            if COUNT.active >= COUNT.limit:
                COUNT.refused += 1
                with contextlib.suppress(Exception):
                    await refuse(self)
                return
            COUNT.active += 1
            try:
                await super().run()
            except Exception as exc:  # one connection's failure must never stop the server
                _contained(exc)
            finally:
                COUNT.active -= 1

        async def _read_data(self) -> None:
            await super()._read_data()
            # The client has gone (EOF or error). hypercorn would keep the connection, and its
            # socket, until its keep-alive timer fires (75 s) when no request was in flight;
            # a client that connects and leaves would hold a descriptor (and a place under the
            # cap) that long. Nothing is left to keep alive: stop the timer now.
            await self.idle_task.stop()

    CappedTCPServer.__name__ = CappedTCPServer.__qualname__ = f"Capped{base.__name__}"
    return CappedTCPServer


def _contained(exc: Exception) -> None:
    COUNT.failed += 1
    kind = _describe(exc)
    if kind not in COUNT.failures_seen:  # once per kind: a client could repeat it at will
        COUNT.failures_seen.add(kind)
        log.warning("closed a client connection after an error in the HTTP server: %s", kind)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


async def _refuse_trio(server: Any) -> None:
    stream = server.stream
    try:
        with anyio.move_on_after(_DRAIN_S):
            await stream.send_all(refusal())
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass
    finally:
        await stream.aclose()


async def _refuse_asyncio(server: Any) -> None:
    writer = server.writer
    try:
        with anyio.move_on_after(_DRAIN_S):
            writer.write(refusal())
            await writer.drain()
            writer.write_eof()
            while await server.reader.read(65536):
                pass
    finally:
        writer.close()
