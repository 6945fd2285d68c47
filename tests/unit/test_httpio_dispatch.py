"""The HTTP edges of the pipeline: reading a body (httpio.read_body) and the response headers a
function may set (dispatch.function_headers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fluxgw.dispatch import function_headers
from fluxgw.errors import HttpError
from fluxgw.httpio import read_body


def messages(*items: dict[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
    queue = list(items)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


async def test_body_arrives_in_chunks() -> None:
    receive = messages(
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd"},
    )
    assert await read_body(receive, "4") == b"abcd"


async def test_no_length_and_no_chunking_means_no_body_and_no_read() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("must not read")

    assert await read_body(receive, None) == b""


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("must not read")

    with pytest.raises(HttpError) as refused:
        await read_body(receive, "11", limit=10)
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")


async def test_chunked_body_over_the_limit_is_refused_while_streaming() -> None:
    receive = messages(
        {"type": "http.request", "body": b"123456", "more_body": True},
        {"type": "http.request", "body": b"789012", "more_body": True},
    )
    with pytest.raises(HttpError) as refused:
        await read_body(receive, None, limit=10, chunked=True)
    assert refused.value.status == 413


async def test_bad_length_and_a_client_that_left() -> None:
    with pytest.raises(HttpError) as bad:
        await read_body(messages(), "ten")
    assert (bad.value.status, bad.value.code) == (400, "bad_request")
    with pytest.raises(HttpError) as gone:
        await read_body(messages({"type": "http.disconnect"}), "5")
    assert gone.value.code == "client_closed"


def test_function_headers_keep_its_own_and_drop_what_the_gateway_owns() -> None:
    headers = function_headers(
        (
            ("Content-Type", "text/plain"),
            ("X-Custom", "1"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Connection", "close"),  # hop-by-hop: the gateway frames the answer
            ("Transfer-Encoding", "chunked"),
            ("Access-Control-Allow-Origin", "*"),  # CORS is the project's policy
            ("RateLimit", "x"),  # the gateway's limits, not the function's
            ("Bad Name", "x"),  # would break the framing
            ("x-split", "a\r\nInjected: 1"),
            ("x-snowman", "\u2603"),  # not latin-1
        )
    )
    assert headers == [
        ("content-type", "text/plain"),
        ("x-custom", "1"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
    ]
