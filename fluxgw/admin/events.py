"""The dashboard's server-sent event stream, fed from the gateway's request feed
(fluxgw.feed): requests as they are answered, async-job steps, a metrics point per second.

One :class:`LiveTail` drains a single feed subscription on a fixed tick (:data:`TICK`)
instead of waking per request, and shares each tick's rows with every open stream: open
dashboards cost the gateway a few wake-ups a second whatever its load, and a new request
still reaches the browser well within a second. With no dashboard open nobody subscribes,
and the gateway builds no feed events at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..httpio import Receive, Send

if TYPE_CHECKING:
    from .app import AdminApp
    from .security import Session

TICK = 0.25  # s between drains of the feed: the tail's worst-case delay
MAX_PER_TICK = 1000  # rows the tail builds per tick; past it only a count
TOTALS_EVERY = 5  # s between the 15-minute totals (the overview's cards)
STREAM_ROWS = 50  # rows a stream sends per tick (200/s, more than a reader can follow)
FEED_BUFFER = 2000  # the tail's subscription; the feed drops the oldest past it
STREAM_BATCHES = 8  # ticks an event stream may lag before it loses one


def request_row(event: Any) -> dict[str, Any]:
    """The JSON a browser gets for one answered request (the key's name, never the key)."""
    return {
        "request_id": event.request_id,
        "time": event.at,
        "method": event.method,
        "path": event.path,
        "status": event.status,
        "duration_ms": round(event.duration_ms, 3),
        "function": event.function,
        "key": event.principal,
        "error": event.error,
    }


def _drain(stream: Any, limit: int) -> tuple[list[Any], list[Any], int]:
    """What the subscription holds now: up to ``limit`` request events, the job events, and
    how many requests were left out (here, or by the feed for a slow reader)."""
    requests: list[Any] = []
    jobs: list[Any] = []
    skipped = 0
    while True:
        try:
            item = stream.receive_nowait()
        except anyio.WouldBlock:
            return requests, jobs, skipped
        if item.kind == "request":
            if len(requests) < limit:
                requests.append(item)
            else:
                skipped += 1
        elif item.kind == "job":
            jobs.append(item)
        else:  # the feed's Dropped notice
            skipped += item.count


class Filter:
    """The requests page's filters: status (``2xx``.. or a code), function, key name;
    ``requests=off`` for a page that only wants metrics or job steps."""

    def __init__(self, query: Mapping[str, list[str]]) -> None:
        self.status = (query.get("status") or [""])[0].strip().lower()
        self.function = (query.get("function") or [""])[0].strip()
        self.key = (query.get("key") or [""])[0].strip()
        self.off = (query.get("requests") or [""])[0] == "off"  # charts or jobs only
        self.cache_key = (self.status, self.function, self.key, str(self.off))

    def __call__(self, row: Mapping[str, Any]) -> bool:
        if self.off:
            return False
        if self.function and row.get("function") != self.function:
            return False
        if self.key and row.get("key") != self.key:
            return False
        if self.status:
            status = str(row.get("status"))
            if self.status.endswith("xx"):
                return status[:1] == self.status[:1]
            return status == self.status
        return True


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@attrs.define
class Batch:
    """What one tick brings every open stream; each filter's encoding is made once."""

    rows: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    skipped: int
    metrics: dict[str, Any] | None
    _encoded: dict[tuple[str, ...], bytes] = attrs.Factory(dict)

    def encode(self, keep: Filter) -> bytes:
        cached = self._encoded.get(keep.cache_key)
        if cached is not None:
            return cached
        chunk = b""
        rows = [row for row in self.rows if keep(row)]
        skipped = self.skipped + max(0, len(rows) - STREAM_ROWS)
        if rows:
            chunk += _event("request", rows[-STREAM_ROWS:])
        if self.jobs:
            chunk += _event("job", self.jobs)
        if skipped and not keep.off:
            chunk += _event("skipped", {"count": skipped})
        if self.metrics is not None:
            chunk += _event("metrics", self.metrics)
        self._encoded[keep.cache_key] = chunk
        return chunk


class LiveTail:
    """One feed subscription shared by every open event stream.

    While at least one stream is open it drains the feed every :data:`TICK`, turns the
    events into rows once, and hands the same :class:`Batch` to each stream: ten open
    dashboards cost the gateway what one does (one subscriber on the feed).
    """

    def __init__(self, feed: Any, series: Any) -> None:
        self._feed = feed
        self._series = series
        self._streams: list[MemoryObjectSendStream[Batch]] = []
        self._someone = anyio.Event()

    @property
    def listening(self) -> int:
        """How many event streams are open."""
        return len(self._streams)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[MemoryObjectReceiveStream[Batch]]:
        send, receive = anyio.create_memory_object_stream[Batch](STREAM_BATCHES)
        self._streams.append(send)
        self._someone.set()
        try:
            with receive:
                yield receive
        finally:
            self._streams.remove(send)
            send.close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            if not self._streams:
                self._someone = anyio.Event()
                await self._someone.wait()
            async with self._feed.subscribe(max_buffer=FEED_BUFFER) as events:
                ticks = 0
                while self._streams:
                    await anyio.sleep(TICK)
                    ticks += 1
                    requests, jobs, skipped = _drain(events, MAX_PER_TICK)
                    metrics: dict[str, Any] | None = None
                    if ticks % round(1 / TICK) == 0:
                        metrics = {"point": self._series.points(1)[-1]}
                        if ticks % round(TOTALS_EVERY / TICK) == 0:
                            # 15 minutes of histograms: the tail's dearest step, so less often
                            metrics["totals"] = self._series.totals()
                    batch = Batch(
                        [request_row(e) for e in requests],
                        [job.to_json() for job in jobs],
                        skipped,
                        metrics,
                    )
                    for stream in list(self._streams):
                        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                            stream.send_nowait(batch)  # a stream that lags loses a tick


async def stream_events(
    app: AdminApp,
    session: Session,
    query: Mapping[str, list[str]],
    receive: Receive,
    send: Send,
    security_headers: list[tuple[str, str]],
) -> None:
    """``text/event-stream`` until the browser leaves, the session ends or the gateway stops.

    Events: ``request`` (a list of rows, filtered as the query asks), ``job`` (async-job
    steps), ``skipped`` (rows not sent: a tick had too many, or the reader fell behind),
    ``metrics`` (the last complete second; every 5 s also the 15-minute totals).
    """
    keep = Filter(query)
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        *((n.encode(), v.encode()) for n, v in security_headers),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})

    async with anyio.create_task_group() as group:

        async def until_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        async def until_closing() -> None:
            await app.closing.wait()
            group.cancel_scope.cancel()

        group.start_soon(until_gone)
        group.start_soon(until_closing)
        async with app.tail.listen() as batches:
            async for batch in batches:
                if not app.sessions.alive(session):
                    break
                chunk = batch.encode(keep)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        group.cancel_scope.cancel()
    # The stream ends cleanly when the session expired or the gateway stops.
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "http.response.body", "body": b"", "more_body": False})
