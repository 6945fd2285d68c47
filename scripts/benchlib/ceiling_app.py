"""The ceiling: a bare hello-world ASGI app on hypercorn, configured like the gateway.

Run as ``python ceiling_app.py PORT [trio|asyncio [CERT KEY]]`` (trio by default; asyncio on
uvloop when installed, as ``flux serve --loop asyncio``; with CERT and KEY, HTTPS with ALPN h2 +
http/1.1, as ``flux serve --tls``); prints ``ceiling ready at http://127.0.0.1:PORT``
once bound and stops on SIGTERM/SIGINT. Whatever the gateway costs on top of this is its own
cost. It uses the server's own socket, hypercorn config and worker choice (fluxgw.server), so
only the app differs.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio

from fluxgw.httpio import answer_lifespan
from fluxgw.server import backend, hypercorn_config, listen_socket, run_hypercorn
from fluxgw.tls import CertFiles

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)  # as the gateway does
        return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def main(port: int, tls: CertFiles | None) -> None:
    sock = listen_socket("127.0.0.1", port)
    config = hypercorn_config("127.0.0.1", port, 1.0, tls)
    config.bind = [f"fd://{sock.detach()}"]
    shutdown = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                shutdown.set()
                return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_signals)
        tasks.start_soon(run_hypercorn, app, config, shutdown.wait)
        print(f"ceiling ready at http://127.0.0.1:{port}", flush=True)


if __name__ == "__main__":
    loop = sys.argv[2] if len(sys.argv) > 2 else "trio"
    tls = CertFiles(Path(sys.argv[3]), Path(sys.argv[4])) if len(sys.argv) > 4 else None
    anyio.run(main, int(sys.argv[1]), tls, **backend(loop))  # type: ignore[arg-type]
