"""Small ASGI helpers: header access, bounded body reading, sending a whole response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, NamedTuple

import orjson

from .errors import HttpError

# The ASGI callables' types as the ASGI spec (and httpx's ASGITransport) declare them.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[str, str]]
JSON = ("content-type", "application/json")


class Answer(NamedTuple):
    """What the gateway sends back: status, headers (lower-case names), body."""

    status: int
    headers: Headers
    body: bytes


MAX_BODY = 6 * 1024 * 1024  # docs/reference.md#status-codes: 6 MiB
DRAIN_LIMIT = 2 * MAX_BODY  # most bytes of a refused body read (and dropped) before the 413
# Set by the gateway or meaningless across a proxy: never copied from a function's response.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "content-length",
        "x-request-id",
    }
)


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case name -> value; repeated names are joined with ', ' (RFC 9110 §5.3), except
    Cookie, whose pairs are joined with '; ' (RFC 6265 §5.4)."""
    headers: dict[str, str] = {}
    for name_b, value_b in raw:
        name = name_b.decode("latin-1").lower()
        value = value_b.decode("latin-1")
        if name in headers:
            value = f"{headers[name]}{'; ' if name == 'cookie' else ', '}{value}"
        headers[name] = value
    return headers


async def read_body(
    receive: Receive,
    declared_length: str | None,
    limit: int = MAX_BODY,
    *,
    chunked: bool = False,
) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``:
    from Content-Length before reading anything, else while streaming, never buffering more
    than ``limit`` bytes."""
    if declared_length is None and not chunked:
        return b""  # RFC 9112 §6.3: neither Content-Length nor Transfer-Encoding, no body
    if declared_length is not None:
        try:
            declared = int(declared_length)
        except ValueError:
            raise HttpError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(499, "client_closed", "the client went away")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def drain_declared_body(receive: Receive, declared_length: str | None) -> None:
    """Read and drop a body refused from its Content-Length (nothing of it read yet), when it
    is at most DRAIN_LIMIT bytes (docs/tls.md).

    An HTTP/1.1 client that is still sending when the server closes the connection sees a
    write error instead of the 413 (over TLS always: the unread bytes make the close a reset).
    Taking in a bounded body first lets it read the answer; a larger one is cut off.
    """
    try:
        budget = int(declared_length or "")
    except ValueError:
        return
    if budget > DRAIN_LIMIT:
        return
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def too_large(limit: int) -> HttpError:
    return HttpError(
        413, "payload_too_large", f"request body is larger than {limit // (1024 * 1024)} MiB"
    )


def error_body(code: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": code, "message": message, "request_id": request_id})


async def send_response(send: Send, status: int, headers: Headers, body: bytes) -> None:
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge an ASGI lifespan's startup and shutdown (returning at once on lifespan
    crashes hypercorn's trio worker)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
