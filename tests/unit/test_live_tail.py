"""The dashboard's live tail (fluxgw.admin.events): one ring on the feed for every open event
stream, one batch per tick shared by all, the newest rows only, every row not sent counted.

The SSE bytes a stream would send are parsed back, so the tests check what a browser gets.
Each test runs under both event loops the gateway supports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable

import anyio
import pytest

from fluxgw.admin.events import STREAM_BATCHES, STREAM_ROWS, Filter, LiveTail
from fluxgw.feed import RequestEvent, RequestFeed, Ring
from fluxgw.timeseries import RequestSeries


@pytest.fixture(params=["trio", "asyncio"])
def run(request) -> Callable[[Callable[[], Awaitable[None]]], None]:
    return lambda body: anyio.run(body, backend=request.param)


def event(n: int, function: str = "f", status: int = 200) -> RequestEvent:
    return RequestEvent(
        at=1000.0 + n,
        request_id=f"{n:032x}",
        method="GET",
        path=f"/r/{n}",
        status=status,
        duration_ms=1.0,
        function=function,
        principal="k",
    )


def parse(chunk: bytes) -> list[tuple[str, object]]:
    """The (event name, data) pairs of an SSE chunk, in order."""
    out = []
    for block in chunk.decode().split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def ids(rows: object) -> list[int]:
    assert isinstance(rows, list)
    return [int(row["request_id"], 16) for row in rows]


def test_a_ring_keeps_the_newest_and_counts_the_rest() -> None:
    ring = Ring(3)
    for n in range(5):
        ring.offer(event(n))
    items, lost = ring.take()
    assert [item.request_id for item in items] == [f"{n:032x}" for n in (2, 3, 4)]
    assert lost == 2
    assert ring.take() == ([], 0)


def test_every_stream_gets_the_same_bytes_with_the_newest_rows(run) -> None:
    async def body() -> None:
        feed = RequestFeed()
        tail = LiveTail(feed, RequestSeries())
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(tail.listen(Filter({}))) for _ in range(10)]
            with feed.ring() as ring:
                for n in range(STREAM_ROWS + 70):
                    feed.publish(event(n))
                tail.step(ring, 1)
            chunks = [(await stream.next()).encode(stream.keep) for stream in streams]
        assert all(chunk is chunks[0] for chunk in chunks)  # encoded once, shared
        sent = parse(chunks[0])
        # The count of older rows first (the page marks the gap), then the newest 50.
        assert sent == [("skipped", {"count": 70}), ("request", sent[1][1])]
        assert ids(sent[1][1]) == list(range(70, 70 + STREAM_ROWS))
        assert not feed.active  # the last stream gone: the gateway builds no events again

    run(body)


def test_a_filtered_stream_gets_only_matching_rows_and_their_count(run) -> None:
    async def body() -> None:
        feed = RequestFeed()
        tail = LiveTail(feed, RequestSeries())
        async with (
            tail.listen(Filter({"function": ["g"], "status": ["5xx"]})) as failing_g,
            tail.listen(Filter({"requests": ["off"]})) as charts_only,
        ):
            with feed.ring() as ring:
                for n in range(300):
                    feed.publish(event(n, "g" if n % 3 == 0 else "f", 503 if n % 2 else 200))
                tail.step(ring, 1)
            batch = await failing_g.next()
            assert await charts_only.next() is batch
        sent = parse(batch.encode(failing_g.keep))
        wanted = [n for n in range(300) if n % 3 == 0 and n % 2]  # g and 503: 50 of them
        assert len(wanted) == STREAM_ROWS
        assert sent == [("request", sent[0][1])]
        assert ids(sent[0][1]) == wanted
        assert all(row["function"] == "g" and row["status"] == 503 for row in sent[0][1])
        assert batch.encode(charts_only.keep) == b""  # no rows, no count, no metrics this tick

    run(body)


def test_a_stream_that_falls_behind_loses_old_ticks_counted_not_buffered(run) -> None:
    async def body() -> None:
        feed = RequestFeed()
        tail = LiveTail(feed, RequestSeries())
        async with tail.listen(Filter({})) as stalled, tail.listen(Filter({})) as reading:
            with feed.ring() as ring:
                for tick in range(1, STREAM_BATCHES + 4):
                    for n in range(10):
                        feed.publish(event(tick * 100 + n))
                    tail.step(ring, tick)
                    assert ids(parse((await reading.next()).encode(reading.keep))[0][1]) == [
                        tick * 100 + n for n in range(10)
                    ]
            # The stalled stream holds only the newest ticks; the 3 it lost are 30 rows.
            assert stalled.take_missed() == 30
            assert stalled.take_missed() == 0
            first = await stalled.next()
            assert ids(parse(first.encode(stalled.keep))[0][1]) == [400 + n for n in range(10)]

    run(body)


def test_new_rows_reach_a_stream_within_a_tick_and_metrics_every_second(run) -> None:
    async def body() -> None:
        feed = RequestFeed()
        tail = LiveTail(feed, RequestSeries(), tick=0.05)
        async with anyio.create_task_group() as group:
            await group.start(tail.run)
            async with tail.listen(Filter({})) as stream:
                while not feed.active:  # the tail subscribes once someone listens
                    await anyio.sleep(0.01)
                feed.publish(event(7))
                with anyio.fail_after(2):
                    rows: list[int] = []
                    metrics = None
                    while not rows or metrics is None:
                        for name, data in parse((await stream.next()).encode(stream.keep)):
                            if name == "request":
                                rows += ids(data)
                            if name == "metrics":
                                metrics = data
                assert rows == [7]
                assert isinstance(metrics, dict) and set(metrics["point"]) >= {"t", "count"}
            with anyio.fail_after(2):
                while feed.active:  # nobody listening: the ring is gone
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()

    run(body)
