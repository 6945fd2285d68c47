"""The dashboard's ASGI app in process, next to a real gateway, on a fake clock: sessions
expire (API and event stream alike), and the live tail carries what the gateway answers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from conftest import BOTH_LOOPS, write_function

from fluxgw.admin.app import AdminApp
from fluxgw.admin.security import SESSION_TTL_S
from fluxgw.testing import FakeClock, open_gateway

pytestmark = BOTH_LOOPS
HOST = "127.0.0.1:4999"


@pytest.fixture
def echo_project(project: Path) -> Path:
    write_function(project, "echo", "def handler(request, ctx):\n    return {'ok': True}\n")
    return project


@contextlib.asynccontextmanager
async def logged_in(admin: AdminApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as client:
        answer = await client.get(f"/login?token={admin.tokens.issue()}")
        assert answer.status_code == 303
        yield client


async def test_a_session_expires(echo_project: Path) -> None:
    clock = FakeClock()
    async with open_gateway(echo_project, in_process=True, clock=clock) as gw:
        admin = AdminApp(gw.gateway, gw.gateway.state, clock=clock)
        admin.bind("127.0.0.1", 4999)
        async with logged_in(admin) as client:
            assert (await client.get("/api/keys")).status_code == 200
            clock.advance(SESSION_TTL_S - 1)
            assert (await client.get("/api/keys")).status_code == 200
            clock.advance(1)
            expired = await client.get("/api/keys")
            assert expired.status_code == 401 and expired.json()["error"] == "unauthenticated"


async def test_event_stream_carries_requests_and_ends_with_the_session(echo_project: Path) -> None:
    clock = FakeClock()
    async with open_gateway(echo_project, in_process=True, clock=clock) as gw:
        key = gw.create_key("laptop")
        admin = AdminApp(gw.gateway, gw.gateway.state, clock=clock)
        admin.bind("127.0.0.1", 4999)
        async with logged_in(admin) as client:
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        chunks: list[bytes] = []
        ended = anyio.Event()
        got_row = anyio.Event()

        async def receive() -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if b"event: request" in chunks[-1]:
                    got_row.set()
                if not message.get("more_body"):
                    ended.set()

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/api/events",
            "query_string": b"",
            "headers": [(b"host", HOST.encode()), (b"cookie", cookie.encode())],
        }
        async with anyio.create_task_group() as tasks:
            await tasks.start(admin.run)
            tasks.start_soon(admin, scope, receive, send)
            with anyio.fail_after(5):
                while not admin.tail.listening:  # the stream has subscribed to the tail
                    await anyio.sleep(0.01)
            answer = await gw.client.post("/echo", headers=gw.auth(key))
            assert answer.status_code == 200
            with anyio.fail_after(5):
                await got_row.wait()
            rows = [
                row
                for chunk in chunks
                for line in chunk.split(b"\n")
                if line.startswith(b"data: [")
                for row in orjson.loads(line[6:])
            ]
            assert [r["request_id"] for r in rows] == [answer.headers["x-request-id"]]
            assert rows[0]["key"] == "laptop" and key not in str(chunks)
            clock.advance(SESSION_TTL_S)
            with anyio.fail_after(5):
                await ended.wait()
            tasks.cancel_scope.cancel()
