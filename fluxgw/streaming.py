"""Sending a function's streamed answer to the client (docs/runtimes.md, "Streaming").

Status and headers leave with the first chunk; each chunk is one ASGI ``more_body`` send
(HTTP/1.1 chunked transfer); a chunk's credit goes back to the worker only once the send
returned, so a slow client slows the function, and the gateway holds at most the protocol's
window per stream. The function's timeout bounds the whole stream. A stream that fails or runs
out of time after its head went out is cut: the app returns without the final empty body,
so hypercorn closes the connection and the client sees an incomplete body. A client that goes
away (``http.disconnect`` from ``receive()``; hypercorn's ``send()`` does not always raise once
it left) stops the stream at once: leaving :meth:`PoolManager.open` cancels the invocation.
"""

from __future__ import annotations

import anyio

from .httpio import Headers, Receive, Send
from .runtime.api import FunctionFailed
from .runtime.pool import Stream


async def send_stream(
    send: Send, receive: Receive, status: int, headers: Headers, stream: Stream
) -> None:
    """Forward ``stream`` to the client; ``stream.outcome`` says how it ended."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    # No content-length: hypercorn frames the body with chunked transfer on HTTP/1.1.
    await send({"type": "http.response.start", "status": status, "headers": raw})
    async with anyio.create_task_group() as group:

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # hypercorn also reports one once the answer is complete: not a departure
                    if stream.outcome == "streaming":
                        stream.outcome = "disconnect"
                        group.cancel_scope.cancel()
                    return

        group.start_soon(watch_disconnect)
        complete = False
        with anyio.move_on_at(stream.end_at):
            try:
                chunks = stream.chunks()
                try:
                    async for chunk in chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        await stream.delivered(len(chunk))
                finally:
                    await chunks.aclose()  # its clean-up now, in this task
                complete = True
            except FunctionFailed:
                pass  # the stream recorded its outcome: error, timeout, worker lost
            except OSError:
                stream.outcome = "disconnect"  # the send failed: the client is gone
        if not complete and stream.outcome == "streaming":
            stream.outcome = "timeout"  # a slow client kept the stream past its timeout
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        group.cancel_scope.cancel()
