"""The ceiling: a bare hello-world ASGI app on hypercorn's trio worker, configured like the gateway.

Run as ``python ceiling_app.py PORT [CERT KEY]``; prints ``ceiling ready at http://127.0.0.1:PORT``
once bound and stops on SIGTERM/SIGINT. Whatever the gateway costs on top of this is its own
cost. With CERT and KEY it serves HTTPS, ALPN h2 + http/1.1, as `flux serve --tls` does.
"""

from __future__ import annotations

import functools
import signal
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        # Returning at once here crashes hypercorn's trio worker: answer the lifespan protocol.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def main(port: int, tls: list[str]) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    if tls:
        config.certfile, config.keyfile = tls
        config.alpn_protocols = ["h2", "http/1.1"]
    config.keep_alive_timeout = 75  # as fluxgw.server configures hypercorn
    config.accesslog = None
    config.graceful_timeout = 1
    shutdown = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                shutdown.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        await nursery.start(functools.partial(serve, app, config, shutdown_trigger=shutdown.wait))
        print(f"ceiling ready at http://127.0.0.1:{port}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2:4])
