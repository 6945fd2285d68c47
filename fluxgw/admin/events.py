"""The dashboard's server-sent event stream, fed from the gateway's request feed
(fluxgw.feed): requests as they are answered, async-job steps, a metrics point per second.

Per request, an open dashboard costs the gateway one ``deque.append`` (besides building the
feed event): :class:`LiveTail` holds a single :class:`fluxgw.feed.Ring` on the feed for all
open streams and empties it on a fixed tick (:data:`TICK`), never waking per request. Each
tick is one :class:`Batch` shared by every stream: per distinct filter it picks the newest
:data:`STREAM_ROWS` matching requests (scanning from the newest, so only the rows sent are
ever turned into JSON) and encodes them once; ten unfiltered dashboards send the same bytes.
A stream that cannot keep up holds at most :data:`STREAM_BATCHES` ticks and loses the oldest,
counted in a ``skipped`` event. With no dashboard open nothing subscribes, and the gateway
builds no feed events at all. docs/dashboard.md, "Cost to the gateway".
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs
import orjson

from ..feed import JobEvent, RequestEvent, RequestFeed, Ring
from ..httpio import Receive, Send
from ..timeseries import RequestSeries

if TYPE_CHECKING:
    from .app import AdminApp
    from .security import Session

TICK = 0.25  # s between drains of the feed: the tail's worst-case delay
TOTALS_EVERY = 5  # s between the 15-minute totals (the overview's cards)
STREAM_ROWS = 50  # rows a stream sends per tick (200/s, more than a reader can follow)
FEED_BUFFER = 2000  # events the tail's ring keeps per tick; older ones are only counted
STREAM_BATCHES = 8  # ticks an event stream may lag before it loses the oldest


def request_row(event: RequestEvent) -> dict[str, Any]:
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


class Filter:
    """The requests page's filters: status (``2xx``.. or a code), function, key name;
    ``requests=off`` for a page that only wants metrics or job steps."""

    def __init__(self, query: Mapping[str, list[str]]) -> None:
        self.status = (query.get("status") or [""])[0].strip().lower()
        self.function = (query.get("function") or [""])[0].strip()
        self.key = (query.get("key") or [""])[0].strip()
        self.off = (query.get("requests") or [""])[0] == "off"  # charts or jobs only
        self.everything = not (self.off or self.status or self.function or self.key)
        self.cache_key = (self.status, self.function, self.key, str(self.off))

    def __call__(self, event: RequestEvent) -> bool:
        if self.off:
            return False
        if self.function and event.function != self.function:
            return False
        if self.key and event.principal != self.key:
            return False
        if self.status:
            status = str(event.status)
            if self.status.endswith("xx"):
                return status[:1] == self.status[:1]
            return status == self.status
        return True


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def skipped_event(count: int) -> bytes:
    return _event("skipped", {"count": count})


@attrs.define
class Batch:
    """What one tick brings every open stream; each filter's rows are picked and encoded once."""

    requests: list[RequestEvent]  # this tick's, oldest first
    jobs: list[dict[str, Any]]
    lost: int  # events the ring dropped this tick (more than FEED_BUFFER arrived)
    metrics: dict[str, Any] | None
    _picked: dict[tuple[str, ...], tuple[list[RequestEvent], int]] = attrs.Factory(dict)
    _encoded: dict[tuple[str, ...], bytes] = attrs.Factory(dict)

    def pick(self, keep: Filter) -> tuple[list[RequestEvent], int]:
        """The newest :data:`STREAM_ROWS` requests ``keep`` matches (oldest first), and how
        many it matches in all."""
        cached = self._picked.get(keep.cache_key)
        if cached is not None:
            return cached
        if keep.off:
            picked: tuple[list[RequestEvent], int] = ([], 0)
        elif keep.everything:
            picked = (self.requests[-STREAM_ROWS:], len(self.requests))
        else:
            rows: list[RequestEvent] = []
            matched = 0
            for event in reversed(self.requests):  # newest first: stop building at the limit
                if keep(event):
                    matched += 1
                    if len(rows) < STREAM_ROWS:
                        rows.append(event)
            rows.reverse()
            picked = (rows, matched)
        self._picked[keep.cache_key] = picked
        return picked

    def unsent(self, keep: Filter) -> int:
        """The rows this tick would give ``keep``: what a stream that loses it did not see."""
        return 0 if keep.off else self.pick(keep)[1] + self.lost

    def encode(self, keep: Filter) -> bytes:
        cached = self._encoded.get(keep.cache_key)
        if cached is not None:
            return cached
        chunk = b""
        rows, matched = self.pick(keep)
        skipped = 0 if keep.off else self.lost + matched - len(rows)
        if skipped:  # before the rows: the page marks the gap below them
            chunk += skipped_event(skipped)
        if rows:
            chunk += _event("request", [request_row(event) for event in rows])
        if self.jobs:
            chunk += _event("job", self.jobs)
        if self.metrics is not None:
            chunk += _event("metrics", self.metrics)
        self._encoded[keep.cache_key] = chunk
        return chunk


class Listener:
    """One open event stream's queue of ticks: bounded, dropping (and counting) the oldest."""

    def __init__(self, keep: Filter) -> None:
        self.keep = keep
        self.missed = 0  # rows of the ticks this stream lost, not yet reported
        self._pending: collections.deque[Batch] = collections.deque()
        self._wake = anyio.Event()

    def offer(self, batch: Batch) -> None:
        if len(self._pending) >= STREAM_BATCHES:
            self.missed += self._pending.popleft().unsent(self.keep)
        self._pending.append(batch)
        self._wake.set()

    async def next(self) -> Batch:
        while not self._pending:
            self._wake = anyio.Event()
            await self._wake.wait()
        return self._pending.popleft()

    def take_missed(self) -> int:
        missed, self.missed = self.missed, 0
        return missed


class LiveTail:
    """One feed subscription (a ring) shared by every open event stream.

    While at least one stream is open it empties the ring every ``tick`` and hands the same
    :class:`Batch` to each stream: ten open dashboards cost the gateway what one does.
    """

    def __init__(self, feed: RequestFeed, series: RequestSeries, tick: float = TICK) -> None:
        self._feed = feed
        self._series = series
        self._tick = tick
        self._listeners: list[Listener] = []
        self._someone = anyio.Event()

    @property
    def listening(self) -> int:
        """How many event streams are open."""
        return len(self._listeners)

    @contextlib.asynccontextmanager
    async def listen(self, keep: Filter) -> AsyncIterator[Listener]:
        listener = Listener(keep)
        self._listeners.append(listener)
        self._someone.set()
        try:
            yield listener
        finally:
            self._listeners.remove(listener)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            if not self._listeners:
                self._someone = anyio.Event()
                await self._someone.wait()
            with self._feed.ring(FEED_BUFFER) as ring:
                ticks = 0
                while self._listeners:
                    await anyio.sleep(self._tick)
                    ticks += 1
                    self.step(ring, ticks)

    def step(self, ring: Ring, ticks: int) -> Batch:
        """One tick: empty ``ring`` into a batch and hand it to every open stream."""
        items, lost = ring.take()
        per_second = max(1, round(1 / self._tick))
        metrics: dict[str, Any] | None = None
        if ticks % per_second == 0:
            metrics = {"point": self._series.points(1)[-1]}
            if ticks % (per_second * TOTALS_EVERY) == 0:
                # 15 minutes of histograms: the tail's dearest step, so less often
                metrics["totals"] = self._series.totals()
        batch = Batch(
            [item for item in items if isinstance(item, RequestEvent)],
            [item.to_json() for item in items if isinstance(item, JobEvent)],
            lost,
            metrics,
        )
        for listener in self._listeners:
            listener.offer(batch)
        return batch


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
    steps), ``skipped`` (rows not sent, just older than the next ``request`` event's: a tick
    had too many, or the reader fell behind),
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
        async with app.tail.listen(keep) as listener:
            while True:
                batch = await listener.next()
                if not app.sessions.alive(session):
                    break
                chunk = batch.encode(keep)  # the same bytes for every stream with this filter
                missed = listener.take_missed()
                if missed:  # this stream fell behind and lost older ticks
                    chunk = skipped_event(missed) + chunk
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        group.cancel_scope.cancel()
    # The stream ends cleanly when the session expired or the gateway stops.
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "http.response.body", "body": b"", "more_body": False})
