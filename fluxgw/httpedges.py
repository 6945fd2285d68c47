"""HTTP edge cases the gateway decides itself (docs/limits.md, "HTTP").

* A request with both ``Content-Length`` and ``Transfer-Encoding`` is refused with 400 and the
  connection is closed (RFC 9112 §6.1: such a message may be an attempt at request
  smuggling; h11 would silently prefer the chunked framing).
* A WebSocket handshake gets a JSON ``501 websockets_not_supported`` with a request id
  (through ASGI's ``websocket.http.response`` extension, which hypercorn implements) instead
  of hypercorn's empty 500.
"""

from __future__ import annotations

from .errors import HttpError
from .httpio import Receive, Scope, Send, error_body
from .tracing import new_request_id

CLOSE = ("connection", "close")


def check_framing(headers: dict[str, str]) -> None:
    """Raise the 400 for a request whose body framing is ambiguous."""
    if "transfer-encoding" in headers and "content-length" in headers:
        raise HttpError(
            400,
            "bad_request",
            "a request must not have both Content-Length and Transfer-Encoding",
            [CLOSE],
        )


async def refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a WebSocket handshake with a JSON 501 (or close it, if the server cannot send
    an HTTP answer)."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    request_id = new_request_id()
    body = error_body(
        "websockets_not_supported",
        "this gateway does not serve WebSocket connections",
        request_id,
    )
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1003})
        return
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "websocket.http.response.start", "status": 501, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
