"""Malformed HTTP on a raw socket: every case gets a clean 4xx or a closed connection (never a
5xx, never a hang), and the gateway answers its health check after each (docs/limits.md).

What answers what: h11 (through hypercorn) refuses what does not parse with 400 and closes;
the gateway refuses ambiguous framing (Content-Length with Transfer-Encoding) itself.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LOOPS, flux, serve, write_function

# One worker runs the module under pytest-xdist (scripts/test), so its two module-scoped
# gateways start once, not once per worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("malformed_http")]

H = "Host: t\r\n"
CASES: dict[str, bytes] = {
    "binary-garbage": b"\x00\x01\x02\x03\xff\r\n\r\n",
    "no-target-no-version": b"GET\r\n\r\n",
    "unknown-version": b"GET / HTTP/9.9\r\n" + H.encode() + b"\r\n",
    "http-0.9": b"GET /\r\n\r\n",
    "no-host-http-1.1": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "header-without-colon": f"GET / HTTP/1.1\r\n{H}BadHeader\r\n\r\n".encode(),
    "space-in-header-name": f"GET / HTTP/1.1\r\n{H}Bad Name: x\r\n\r\n".encode(),
    "space-before-colon": f"GET / HTTP/1.1\r\n{H}X-A : x\r\n\r\n".encode(),
    "obs-fold": f"GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n".encode(),
    "nul-in-header-value": f"GET / HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n".encode(),
    "bare-cr-in-value": f"GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n".encode(),
    "header-over-16k": f"GET / HTTP/1.1\r\n{H}X-A: {'a' * 20_000}\r\n\r\n".encode(),
    "request-line-100k": f"GET /{'a' * 100_000} HTTP/1.1\r\n{H}\r\n".encode(),
    "many-headers": (f"GET / HTTP/1.1\r\n{H}" + "X-A: b\r\n" * 3000 + "\r\n").encode(),
    "content-length-not-a-number": f"POST /f HTTP/1.1\r\n{H}Content-Length: abc\r\n\r\n".encode(),
    "content-length-negative": f"POST /f HTTP/1.1\r\n{H}Content-Length: -1\r\n\r\n".encode(),
    "content-length-twice-different": (
        f"POST /f HTTP/1.1\r\n{H}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    ).encode(),
    "content-length-and-chunked": (
        f"POST /f HTTP/1.1\r\n{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode(),
    "transfer-encoding-gzip": (
        f"POST /f HTTP/1.1\r\n{H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ).encode(),
    "transfer-encoding-identity": (
        f"POST /f HTTP/1.1\r\n{H}Transfer-Encoding: identity\r\n\r\n"
    ).encode(),
    "transfer-encoding-twice": (
        f"POST /f HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
        "\r\n\r\n0\r\n\r\n"
    ).encode(),
    "bad-chunk-size": f"POST /f HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
    "huge-chunk-size": (
        f"POST /f HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"
    ).encode(),
    "truncated-chunked-body": (
        f"POST /f HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n5\r\nab"
    ).encode(),
    "short-body": f"POST /f HTTP/1.1\r\n{H}Content-Length: 100\r\n\r\nabc".encode(),
    "declared-10-gb": f"POST /f HTTP/1.1\r\n{H}Content-Length: 10000000000\r\n\r\n".encode(),
    "bad-method-chars": f"G@T / HTTP/1.1\r\n{H}\r\n".encode(),
    "lower-case-method": f"get / HTTP/1.1\r\n{H}\r\n".encode(),
    "absolute-form-target": f"GET http://evil.example/f HTTP/1.1\r\n{H}\r\n".encode(),
    "asterisk-target": f"OPTIONS * HTTP/1.1\r\n{H}\r\n".encode(),
    "connect": f"CONNECT evil.example:443 HTTP/1.1\r\n{H}\r\n".encode(),
    "target-without-slash": f"GET f HTTP/1.1\r\n{H}\r\n".encode(),
    "percent-nul": f"GET /%00 HTTP/1.1\r\n{H}\r\n".encode(),
    "bad-percent-escape": f"GET /%zz%f HTTP/1.1\r\n{H}\r\n".encode(),
    "non-ascii-target": b"GET /\xff\xfe HTTP/1.1\r\n" + H.encode() + b"\r\n",
    "dot-segments": f"GET /a/../../etc/passwd HTTP/1.1\r\n{H}\r\n".encode(),
    "space-in-target": f"GET /a b HTTP/1.1\r\n{H}\r\n".encode(),
    "lf-only-line-endings": b"GET / HTTP/1.1\nHost: t\n\n",
    "upgrade-h2c-without-settings": f"GET / HTTP/1.1\r\n{H}Upgrade: h2c\r\n\r\n".encode(),
    "partial-request-then-close": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: ",
    "expect-100-no-body": f"POST /f HTTP/1.1\r\n{H}Expect: 100-continue\r\n"
    "Content-Length: 5\r\n\r\n".encode(),
    # hypercorn issue #203: this used to stop the whole gateway (fluxgw/connguard.py)
    "pipelined-after-connection-close": (
        f"GET /f HTTP/1.1\r\n{H}Connection: close\r\n\r\nGET /f HTTP/1.1\r\n{H}\r\n"
    ).encode(),
    "pipelined-after-http-1.0": f"GET /f HTTP/1.0\r\n\r\nGET /f HTTP/1.1\r\n{H}\r\n".encode(),
}
# Requests that are valid so far but incomplete: the server may wait for the rest.
INCOMPLETE = {"partial-request-then-close", "expect-100-no-body"}
# Not 4xx, and right: an unknown or repeated transfer coding gets 501 (RFC 9112 §6.1, answered
# by h11); hypercorn accepts an h2c upgrade (101).
ALSO_ALLOWED = {
    "transfer-encoding-gzip": {501},
    "transfer-encoding-identity": {501},
    "transfer-encoding-twice": {501},
    "upgrade-h2c-without-settings": {101},
}
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


@pytest.fixture(scope="module", params=LOOPS)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, str]]:
    """One gateway per event loop (`flux serve --loop trio|asyncio`) for the whole module."""
    project = tmp_path_factory.mktemp("malformed") / "proj"
    (project / "functions").mkdir(parents=True)
    write_function(project, "f", "def handler(request, ctx):\n    return 'ok'\n", route="/f")
    flux(project, "deploy")
    with serve(project, loop=request.param) as gw:
        parts = urlsplit(gw.url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port, gw.url
        assert gw.process.poll() is None, "the gateway died"


def exchange(host: str, port: int, payload: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send ``payload`` and read until the server closes, a whole answer (by Content-Length)
    has arrived, or ``timeout``. Returns what was read and whether the server closed.

    The client does not half-close: hypercorn takes a client's EOF for a vanished client and
    drops the answer it was about to send."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _complete(data):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, True
            except TimeoutError:
                return data, False
            if not chunk:
                return data, True
            data += chunk
        return data, False


def _complete(data: bytes) -> bool:
    """Has a final (non-1xx) answer arrived whole?"""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        match = STATUS.match(head)
        if match and match.group(1).startswith(b"1"):
            data = rest
            continue
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        return length is not None and len(rest) >= int(length.group(1))


@pytest.mark.parametrize("case", CASES)
def test_malformed_request_gets_a_clean_4xx_or_close(
    gateway: tuple[str, int, str], case: str
) -> None:
    host, port, url = gateway
    data, closed = exchange(host, port, CASES[case])
    statuses = [int(code) for code in STATUS.findall(data) if code != b"100"]
    if not statuses and case not in INCOMPLETE:  # no answer: the server must have closed
        assert closed and data == b"", f"no HTTP answer and not closed: {data[:200]!r}"
    allowed = ALSO_ALLOWED.get(case, set())
    for status in statuses:
        assert 400 <= status < 500 or status in allowed, f"status {status}: {data[:300]!r}"
    assert b"Traceback" not in data
    health = httpx.get(f"{url}/_flux/health", timeout=5)
    assert health.status_code == 200


def test_content_length_with_transfer_encoding_is_400_and_closes(
    gateway: tuple[str, int, str],
) -> None:
    host, port, _ = gateway
    # Without half-closing: the server itself must close after its 400.
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(CASES["content-length-and-chunked"])
        data = b""
        while chunk := sock.recv(65536):  # until the server closes (or the 5 s timeout)
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b'"error":"bad_request"' in data and b"Transfer-Encoding" in data


def test_pipelined_request_after_an_ambiguous_one_is_not_served(
    gateway: tuple[str, int, str],
) -> None:
    host, port, _ = gateway
    pipelined = b"GET /_flux/health HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(CASES["content-length-and-chunked"] + pipelined)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    assert b"HTTP/1.1 200" not in data, data[:300]


def test_websocket_handshake_gets_json_501_with_request_id(
    gateway: tuple[str, int, str],
) -> None:
    host, port, _ = gateway
    payload = (
        f"GET /f HTTP/1.1\r\n{H}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    data, _ = exchange(host, port, payload)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501"), data[:300]
    assert b"x-request-id: " in head.lower()
    assert b'"error":"websockets_not_supported"' in body and b'"request_id":"' in body


def test_pipelined_requests_are_each_answered(gateway: tuple[str, int, str]) -> None:
    host, port, _ = gateway
    one = f"GET /_flux/health HTTP/1.1\r\n{H}\r\n".encode()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(one * 3)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3 and (chunk := sock.recv(65536)):
            data += chunk
    assert [int(s) for s in STATUS.findall(data)] == [200, 200, 200]
