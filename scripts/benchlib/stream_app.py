"""The streaming ceiling: hypercorn alone (trio worker) streaming ``?mb=N`` megabytes in 64 KiB
chunks. Run as ``python stream_app.py PORT``; prints ``ready`` once bound."""

from __future__ import annotations

import functools
import sys
import urllib.parse

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from fluxgw.httpio import answer_lifespan

CHUNK = b"x" * 65536


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)  # as the gateway does
        return
    if scope["type"] != "http":
        return
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    chunks = int(query.get("mb", "1")) * 16
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(chunks):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve, app, config))
        print("stream app ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
