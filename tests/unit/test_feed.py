"""The live feed (fluxgw.feed): fan-out, bounded buffers, drop-oldest with a notice.

Each test runs its body under both event loops the gateway supports (anyio.run with trio and
asyncio), since the feed is shared by the request log and the dashboard on either.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import anyio
import pytest

from fluxgw.feed import (
    Dropped,
    JobEvent,
    RequestEvent,
    RequestFeed,
    job_event,
    request_event,
)
from fluxgw.jobs import Job, QueueEvent
from fluxgw.runtime.api import FunctionFailed, Invocation, InvocationResult, LogLine
from fluxgw.tracing import Span


@pytest.fixture(params=["trio", "asyncio"])
def run(request) -> Callable[[Callable[[], Awaitable[None]]], None]:
    return lambda body: anyio.run(body, backend=request.param)


def queued_job(function: str, attempts: int, max_attempts: int = 3) -> Job:
    invocation = Invocation(request_id="e" * 32, method="POST", path="/jobs", deadline=1.0)
    return Job(
        "e" * 32, function, invocation, attempts, max_attempts, "running", 1.0,
        None, None, None, None, 1.0, 1.0,
    )  # fmt: skip


def event(n: int) -> RequestEvent:
    return RequestEvent(
        at=1000.0 + n,
        request_id=f"{n:032x}",
        method="GET",
        path=f"/r/{n}",
        status=200,
        duration_ms=1.0,
    )


def drain(stream) -> list:
    items = []
    while True:
        try:
            items.append(stream.receive_nowait())
        except anyio.WouldBlock:
            return items


def test_nobody_listening_is_inactive_and_publish_is_a_no_op():
    feed = RequestFeed()
    assert not feed.active
    feed.publish(event(1))  # no subscriber, no loop needed: nothing to do


def test_every_subscriber_gets_every_event_in_order(run):
    async def body():
        feed = RequestFeed()
        async with feed.subscribe() as first, feed.subscribe() as second:
            assert feed.active
            for n in range(5):
                feed.publish(event(n))
            assert [e.request_id for e in drain(first)] == [f"{n:032x}" for n in range(5)]
            assert [e.request_id for e in drain(second)] == [f"{n:032x}" for n in range(5)]
        assert not feed.active

    run(body)


def test_events_published_before_subscribing_are_not_replayed(run):
    async def body():
        feed = RequestFeed()
        async with feed.subscribe() as early:
            feed.publish(event(1))
            async with feed.subscribe() as late:
                feed.publish(event(2))
                assert [e.path for e in drain(late)] == ["/r/2"]
            assert [e.path for e in drain(early)] == ["/r/1", "/r/2"]

    run(body)


def test_a_waiting_reader_wakes_up_on_publish(run):
    async def body():
        feed = RequestFeed()
        got = []
        async with feed.subscribe() as stream, anyio.create_task_group() as tg:

            async def read():
                got.append(await stream.receive())

            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            feed.publish(event(7))
        assert [e.path for e in got] == ["/r/7"]

    run(body)


def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many(run):
    async def body():
        feed = RequestFeed()
        async with feed.subscribe(max_buffer=4) as slow, feed.subscribe(max_buffer=100) as fast:
            for n in range(10):
                feed.publish(event(n))  # never blocks, though nobody reads `slow`
            notice, *rest = drain(slow)
            assert len(rest) < 4
            kept = [i.path for i in rest]
            # the notice comes first, where the gap is, and counts every event not delivered
            assert notice == Dropped(10 - len(kept))
            assert kept == [f"/r/{n}" for n in range(10 - len(kept), 10)]  # the newest survive
            # the subscriber that keeps up lost nothing
            assert [i.path for i in drain(fast)] == [f"/r/{n}" for n in range(10)]

    run(body)


def test_after_a_gap_the_notice_comes_before_the_next_event(run):
    async def body():
        feed = RequestFeed()
        async with feed.subscribe(max_buffer=2) as stream:
            for n in range(5):
                feed.publish(event(n))
            items = drain(stream)
            assert items == [Dropped(4), event(4)]
            feed.publish(event(5))  # the reader caught up: no notice any more
            assert drain(stream) == [event(5)]

    run(body)


def test_subscribe_refuses_a_buffer_too_small_for_a_notice(run):
    async def body():
        with pytest.raises(ValueError, match="at least 2"):
            async with RequestFeed().subscribe(max_buffer=1):
                pass

    run(body)


def test_leaving_the_block_unsubscribes_even_on_error(run):
    async def body():
        feed = RequestFeed()
        with pytest.raises(RuntimeError):
            async with feed.subscribe():
                raise RuntimeError("listener failed")
        assert not feed.active
        feed.publish(event(1))

    run(body)


def test_request_event_from_trace_parts_has_no_secret_and_serialises():
    line = LogLine(1000.5, "stdout", "marker")
    runtime = Span("runtime", 1000.1, 0.2, {"worker_pid": 1, "start": "cold", "waited_ms": 0.0})
    made = request_event(
        at=1000.0,
        request_id="a" * 32,
        method="POST",
        path="/hello",
        status=200,
        duration_ms=12.5,
        function="hello",
        principal="laptop",
        gateway_span={"auth": "ok", "key": "laptop"},
        spans=[runtime, Span("function", 1000.3, 1.0, {"status": 200})],
        logs=[line],
    )
    assert made.start == "cold"
    assert made.logs == (line,)
    assert made.error is None
    data = made.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["principal"] == "laptop"
    assert data["logs"] == [{"time": 1000.5, "stream": "stdout", "text": "marker"}]
    assert data["time"] == 1000.0


def test_request_event_takes_the_error_of_a_refusal_or_a_failed_function():
    refused = request_event(
        at=1.0,
        request_id="b" * 32,
        method="GET",
        path="/x",
        status=429,
        duration_ms=0.1,
        function=None,
        principal="laptop",
        gateway_span={"error": "rate_limited"},
        message="rate limit of the free plan exceeded (120/min, burst 120); retry in 12 s",
    )
    assert (refused.error, refused.start) == ("rate_limited", None)
    crashed = request_event(
        at=1.0,
        request_id="c" * 32,
        method="GET",
        path="/x",
        status=502,
        duration_ms=3.0,
        function="x",
        principal=None,
        gateway_span={"error": "function_error"},
        spans=[Span("function", 1.0, 2.0, {"error": "function_error", "message": "boom"})],
    )
    assert crashed.error == "function_error"
    queued = request_event(
        at=1.0,
        request_id="d" * 32,
        method="POST",
        path="/q",
        status=202,
        duration_ms=1.0,
        function="q",
        principal="k",
        gateway_span={"queued": True},
    )
    assert queued.queued


def test_job_events_from_dispatcher_details():
    job = queued_job("resize", attempts=1)
    running = job_event(QueueEvent("running", job, 50.0, wait_ms=3.0))
    assert (running.event, running.attempt, running.status, running.logs) == (
        "running",
        1,
        None,
        (),
    )
    result = InvocationResult(
        200, (), b"ok", logs=(LogLine(50.0, "stdout", "done"),), cold_start=True
    )
    ok = job_event(QueueEvent("succeeded", job, 50.0, status=200, duration_ms=4.0, result=result))
    assert (ok.status, ok.start, ok.duration_ms, [line.text for line in ok.logs]) == (
        200,
        "cold",
        4.0,
        ["done"],
    )
    failure = FunctionFailed(502, "function_error", "boom", logs=(LogLine(50.0, "stderr", "tb"),))
    retry = job_event(
        QueueEvent(
            "retry",
            job,
            50.0,
            status=502,
            error="function_error: boom",
            retry_in_s=1.5,
            duration_ms=2.0,
            failure=failure,
        )
    )
    assert isinstance(retry, JobEvent)
    assert (retry.status, retry.error, retry.retry_in_s) == (502, "function_error: boom", 1.5)
    assert [line.text for line in retry.logs] == ["tb"]
    data = retry.to_json()
    assert json.loads(json.dumps(data)) == data
