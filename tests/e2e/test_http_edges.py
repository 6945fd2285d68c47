"""HTTP edges the gateway owns (docs/limits.md, "HTTP"): a function's response headers, the
connection cap, the open-file limit."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import SERVER_LOOPS, bearer, flux, key_for, serve, write_function

pytestmark = pytest.mark.e2e

HEADERS_FUNCTION = """\
from fluxgw.runtime import Response


def handler(request, ctx):
    kind = request["query"].get("kind", "")
    headers = {
        "ctl-value": [("x-a", "a\\x01b")],
        "newline-value": [("x-a", "a\\r\\nset-cookie: stolen=1")],
        "del-value": [("x-a", "a\x7fb")],
        "bad-name": [("x(a", "b")],
        "non-latin1-value": [("x-a", "\u2603")],
        "colon-name": [("x:a", "b")],
        "server-owned": [
            ("Date", "Mon, 01 Jan 1990 00:00:00 GMT"),
            ("Server", "evil/1.0"),
            ("Connection", "close, x-private"),
            ("X-Private", "hop"),
            ("Keep-Alive", "timeout=1"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "yes"),
        ],
    }[kind]
    return Response(status=200, body="ok", headers=headers)
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    project = tmp_path_factory.mktemp("edges") / "proj"
    (project / "functions").mkdir(parents=True)
    write_function(project, "h", HEADERS_FUNCTION, route="/h", method="GET")
    flux(project, "deploy")
    key = key_for(project)
    with serve(project) as gw:
        yield gw.url, key


# Line breaks, NUL and ':' are refused by the python worker shim (function_error), a name that
# is not a token by the worker protocol (bad_function_response); every other control character
# and a non-Latin-1 value by the gateway (invalid_response). Always 502, never passed on.
@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("ctl-value", "invalid_response"),
        ("del-value", "invalid_response"),
        ("bad-name", "bad_function_response"),
        ("non-latin1-value", "invalid_response"),
        ("newline-value", "function_error"),
        ("colon-name", "function_error"),
    ],
)
def test_invalid_function_header_is_502_and_never_reaches_the_client(
    gateway: tuple[str, str], kind: str, code: str
) -> None:
    url, key = gateway
    answer = httpx.get(f"{url}/h", params={"kind": kind}, headers=bearer(key))
    assert answer.status_code == 502
    assert answer.json()["error"] == code
    assert answer.json()["request_id"] == answer.headers["x-request-id"]
    assert "x-a" not in answer.headers and "set-cookie" not in answer.headers
    assert "x(a" not in answer.headers and "x:a" not in answer.headers


def test_date_server_and_hop_by_hop_headers_of_a_function_are_not_passed_on(
    gateway: tuple[str, str],
) -> None:
    url, key = gateway
    answer = httpx.get(f"{url}/h", params={"kind": "server-owned"}, headers=bearer(key))
    assert answer.status_code == 200
    raw = answer.headers.raw
    names = [name.lower() for name, _ in raw]
    assert names.count(b"date") == 1 and b"1990" not in answer.headers["date"].encode()
    assert b"server" not in names
    for hop in (b"x-private", b"keep-alive", b"proxy-connection"):
        assert hop not in names, hop
    assert answer.headers["x-kept"] == "yes"
    assert answer.headers.get("connection") != "close, x-private"


def test_open_file_limit_is_raised_to_the_hard_limit(project: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    write_function(project, "x", "def handler(request, ctx):\n    return 1\n")
    flux(project, "deploy")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))  # inherited by flux
    try:
        with serve(project) as gw:
            limits = Path(f"/proc/{gw.process.pid}/limits").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert line.split()[3] == expected, line


@SERVER_LOOPS
def test_connections_over_the_cap_get_a_clean_503(project: Path, loop: str) -> None:
    write_function(project, "x", "def handler(request, ctx):\n    return 1\n")
    flux(project, "deploy")
    with serve(project, "--max-connections", "8", loop=loop) as gw:
        parts = urlsplit(gw.url)
        address = (parts.hostname, parts.port)
        held = [socket.create_connection(address, timeout=5) for _ in range(8)]
        try:
            # the server counts a connection once it has accepted it: poll until the 9th is
            # refused (each try is a new connection, closed at once)
            deadline = time.monotonic() + 10
            while True:
                with socket.create_connection(address, timeout=5) as extra:
                    extra.sendall(
                        b"GET /_flux/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                    )
                    data = b""
                    while chunk := extra.recv(65536):
                        data += chunk
                if data.startswith(b"HTTP/1.1 503"):
                    break
                assert time.monotonic() < deadline, data[:200]
            assert b'"error":"too_many_connections"' in data and b'"request_id"' in data
            assert b"connection: close" in data.lower()
            # the held connections are served normally
            held[0].sendall(b"GET /_flux/health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()
        # once they are gone, new connections are served again
        deadline = time.monotonic() + 10
        while httpx.get(f"{gw.url}/_flux/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_long_unknown_path_is_not_echoed_whole(gateway: tuple[str, str]) -> None:
    url, key = gateway
    answer = httpx.get(f"{url}/{'a' * 10_000}", headers=bearer(key))
    assert answer.status_code == 404
    assert len(answer.json()["message"]) < 400
    assert "(10001 characters)" in answer.json()["message"]
