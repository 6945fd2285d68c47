"""The gateway publishes every answered request and every async-job event to its live feed."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from conftest import BOTH_LOOPS, write_function

from fluxgw.feed import JobEvent, RequestEvent
from fluxgw.testing import open_gateway

pytestmark = BOTH_LOOPS

pytestmark = BOTH_LOOPS

PRINTS = "def handler(request, ctx):\n    print('marker-feed')\n    return {'ok': True}\n"
FAILS = "def handler(request, ctx):\n    raise RuntimeError('boom-feed')\n"


@pytest.fixture
def feed_project(project: Path) -> Path:
    write_function(project, "prints", PRINTS, route="/prints", method="GET")
    write_function(project, "fails", FAILS, route="/fails", method="GET")
    write_function(project, "later", PRINTS, route="/later", method="POST", **{"async": True})
    return project


async def next_event(stream, kind: type, timeout: float = 30.0):
    with anyio.fail_after(timeout):
        while True:
            item = await stream.receive()
            if isinstance(item, kind):
                return item


async def test_requests_and_refusals_reach_a_subscriber(feed_project: Path) -> None:
    async with open_gateway(feed_project, in_process=True) as gw:
        key = gw.create_key("laptop")
        async with gw.gateway.feed.subscribe() as stream:
            ok = await gw.client.get("/prints", headers=gw.auth(key))
            event = await next_event(stream, RequestEvent)
            assert (event.method, event.path, event.status, event.function) == (
                "GET",
                "/prints",
                200,
                "prints",
            )
            assert event.request_id == ok.headers["x-request-id"]
            assert event.principal == "laptop"
            assert event.start in ("cold", "warm")
            assert [line.text for line in event.logs] == ["marker-feed"]
            assert key not in repr(event) and key not in str(event.to_json())

            await gw.client.get("/prints")  # no key
            refused = await next_event(stream, RequestEvent)
            assert (refused.status, refused.error) == (401, "missing_key")
            assert refused.message and "Authorization" in refused.message

            await gw.client.get("/fails", headers=gw.auth(key))
            failed = await next_event(stream, RequestEvent)
            assert (failed.status, failed.error) == (502, "function_error")
            assert "boom-feed" in (failed.message or "")
            assert any("RuntimeError" in line.text for line in failed.logs)  # the traceback


async def test_async_jobs_publish_their_steps(feed_project: Path) -> None:
    async with open_gateway(feed_project, in_process=True) as gw:
        key = gw.create_key("laptop")
        async with gw.gateway.feed.subscribe() as stream:
            answer = await gw.client.post("/later", headers=gw.auth(key))
            assert answer.status_code == 202
            accepted = await next_event(stream, RequestEvent)
            assert (accepted.status, accepted.queued) == (202, True)
            running = await next_event(stream, JobEvent)
            done = await next_event(stream, JobEvent)
            assert (running.event, done.event) == ("running", "succeeded")
            assert done.request_id == answer.headers["x-request-id"]
            assert [line.text for line in done.logs] == ["marker-feed"]
