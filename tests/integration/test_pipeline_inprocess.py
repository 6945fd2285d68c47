"""Every status of docs/reference.md#status-codes through the in-process gateway: the ASGI app
called without sockets (httpx's ASGITransport, or raw ASGI where a client cannot misbehave),
a fake clock for rate limits, real worker processes. Runs on both event loops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import BOTH_LOOPS, write_function

from fluxgw.testing import FluxTestGateway, open_gateway

pytestmark = BOTH_LOOPS

FUNCTIONS = {
    "hello": ("def handler(request, ctx):\n    return {'hi': request['body']}\n", {}),
    "crash": ("import os\ndef handler(request, ctx):\n    os._exit(3)\n", {}),
    "hang": ("import time\ndef handler(request, ctx):\n    time.sleep(30)\n", {"timeout": 1}),
    "job": ("def handler(request, ctx):\n    return 'done'\n", {"async": True}),
}


@pytest.fixture
async def gw(project: Path) -> AsyncIterator[FluxTestGateway]:
    for name, (code, config) in FUNCTIONS.items():
        write_function(project, name, code, route=f"/{name}", **config)
    async with open_gateway(project, in_process=True, plan="free") as gateway:
        yield gateway


def error_of(response: Any) -> str:
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]


async def test_success_async_and_preflight(gw: FluxTestGateway) -> None:
    key = gw.create_key("ci")
    ok = await gw.client.post("/hello", json={"a": 1}, headers=gw.auth(key))
    assert ok.status_code == 200 and ok.json() == {"hi": {"a": 1}}
    assert ok.headers["ratelimit-policy"] and ok.headers["x-request-id"]
    queued = await gw.client.post("/job", headers=gw.auth(key))
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    preflight = await gw.client.options(
        "/hello",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 204 and "ratelimit" not in preflight.headers
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"


async def test_refusals_before_dispatch(gw: FluxTestGateway, tmp_path: Path) -> None:
    key = gw.create_key("ci")
    scoped = gw.create_key("scoped", functions=["crash"])
    missing = await gw.client.post("/hello")
    assert missing.status_code == 401 and error_of(missing) == "missing_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    forbidden = await gw.client.post("/hello", headers=gw.auth(scoped))
    assert forbidden.status_code == 403 and error_of(forbidden) == "key_not_for_function"
    nothing = await gw.client.get("/nope", headers=gw.auth(key))
    assert nothing.status_code == 404 and error_of(nothing) == "not_found"
    big = await gw.client.post("/hello", content=b"x" * (6 * 1024 * 1024 + 1), headers=gw.auth(key))
    assert big.status_code == 413 and error_of(big) == "payload_too_large"


async def test_rate_limit_refills_with_the_fake_clock(gw: FluxTestGateway) -> None:
    key = gw.create_key("burst")
    statuses = [
        (await gw.client.get("/nope", headers=gw.auth(key))).status_code for _ in range(121)
    ]
    assert statuses[:120] == [404] * 120
    assert statuses[120] == 429
    refused = await gw.client.get("/nope", headers=gw.auth(key))
    assert error_of(refused) == "rate_limited" and int(refused.headers["retry-after"]) >= 1
    gw.clock.advance(1.0)
    assert (await gw.client.get("/nope", headers=gw.auth(key))).status_code == 404


async def test_function_failures(gw: FluxTestGateway) -> None:
    key = gw.create_key("ci")
    crashed = await gw.client.post("/crash", headers=gw.auth(key))
    assert crashed.status_code == 502 and error_of(crashed) == "function_crashed"
    hung = await gw.client.post("/hang", headers=gw.auth(key))
    assert hung.status_code == 504 and error_of(hung) == "function_timeout"
    # the next request gets a healthy worker
    assert (await gw.client.post("/hello", headers=gw.auth(key))).status_code == 200


async def test_queue_unavailable_is_503(gw: FluxTestGateway) -> None:
    key = gw.create_key("ci")
    gw.gateway.queue.close()  # the queue's database is gone: nothing can be stored
    refused = await gw.client.post("/job", headers=gw.auth(key))
    assert refused.status_code == 503 and error_of(refused) == "queue_unavailable"


async def test_stalled_body_is_408(gw: FluxTestGateway) -> None:
    key = gw.create_key("ci")
    write_function(gw.project_dir, "quick", FUNCTIONS["hello"][0], route="/quick", timeout=1)
    gw.redeploy()
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/quick",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-length", b"10")],
    }

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()  # the client never sends its body
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await gw.app(scope, receive, send)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"error":"request_timeout"' in sent[1]["body"]
