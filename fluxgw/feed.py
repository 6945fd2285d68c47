"""The live feed: completed requests and async-job events, in process, for whoever listens.

The gateway calls :meth:`RequestFeed.publish` once per answered request (where it records the
trace) and once per async-job event. Listeners that want every event in order (the request
log of `flux dev` / `flux serve --log-requests`) call :meth:`RequestFeed.subscribe` and read
an anyio memory object stream; a listener that looks a few times a second and only wants the
newest events (the dashboard's live tail) takes a :meth:`RequestFeed.ring` instead, which costs
a request one ``deque.append``.

Publishing never waits and never fails: with nobody listening it is one truthiness check
(the gateway checks :attr:`RequestFeed.active` before it even builds an event), and a
subscriber that reads too slowly loses its *oldest* buffered events instead of slowing
requests down. It then receives a :class:`Dropped` notice with how many it lost, before the
next event. The feed is used from the event loop's thread only (like everything on the
request path).

An event carries what a log line needs and nothing secret: the key's *name*, never the key
(the gateway never has anything else to give), and the function's output lines as captured.
See docs/logs.md.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .runtime.api import FunctionFailed, LogLine

if TYPE_CHECKING:
    from .exchange import Exchange
    from .jobs import QueueEvent

__all__ = [
    "DEFAULT_BUFFER",
    "Dropped",
    "FeedItem",
    "JobEvent",
    "RequestEvent",
    "RequestFeed",
    "Ring",
    "job_event",
    "request_event",
]

DEFAULT_BUFFER = 1000  # events a subscriber may lag behind before the oldest are dropped


def _logs(value: Iterable[LogLine]) -> tuple[LogLine, ...]:
    return tuple(value)


@attrs.frozen(slots=True)
class RequestEvent:
    """One answered request (refusals included), as its log line shows it."""

    at: float  # epoch seconds the request arrived
    request_id: str
    method: str
    path: str
    status: int
    duration_ms: float
    function: str | None = None
    start: str | None = None  # "cold" or "warm" when a worker ran it
    principal: str | None = None  # the key's name or the token's subject (never the credential)
    error: str | None = None  # the error code of an error answer ("rate_limited", ...)
    message: str | None = None  # the error's human text, as sent to the client
    logs: tuple[LogLine, ...] = attrs.field(default=(), converter=_logs)
    queued: bool = False  # an async function's 202: its job events follow

    kind = "request"

    def to_json(self) -> dict[str, Any]:
        return _event_json(self)


@attrs.frozen(slots=True)
class JobEvent:
    """One step of an async job: ``running`` (an attempt starts), ``retry``, ``succeeded``,
    ``failed``."""

    at: float  # epoch seconds of the event
    request_id: str
    function: str
    event: str
    attempt: int
    max_attempts: int
    status: int | None = None  # the function's status (succeeded) or the failure's (502/504)
    duration_ms: float | None = None  # the attempt's, once it ended
    start: str | None = None  # "cold" or "warm", when the attempt reached a worker
    error: str | None = None  # what failed (retry, failed)
    retry_in_s: float | None = None  # retry: the backoff before the next attempt
    logs: tuple[LogLine, ...] = attrs.field(default=(), converter=_logs)

    kind = "job"

    def to_json(self) -> dict[str, Any]:
        return _event_json(self)


@attrs.frozen(slots=True)
class Dropped:
    """``count`` events were lost because this subscriber read too slowly."""

    count: int

    kind = "dropped"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "count": self.count}


FeedItem = RequestEvent | JobEvent | Dropped


def _event_json(event: RequestEvent | JobEvent) -> dict[str, Any]:
    """Its fields; ``time`` (and each output line's) in epoch seconds (the dashboard's
    contract; the request log's JSON lines add an ISO 8601 form)."""
    data = attrs.asdict(event, recurse=False)
    at = data.pop("at")
    data["logs"] = [_log_json(line) for line in event.logs]
    if data["duration_ms"] is not None:
        data["duration_ms"] = round(data["duration_ms"], 3)
    return {"type": event.kind, "time": at, **data}


def _log_json(line: LogLine) -> dict[str, Any]:
    return {"time": line.timestamp, "stream": line.stream, "text": line.text}


@attrs.define(eq=False)
class _Subscriber:
    send: MemoryObjectSendStream[FeedItem]
    tap: MemoryObjectReceiveStream[FeedItem]  # a clone of the reader's end: pops the oldest
    max_buffer: int

    def offer(self, event: RequestEvent | JobEvent) -> None:
        _offer(self, event)


class Ring:
    """The newest ``maxlen`` events published since the last :meth:`take`, and how many older
    ones fell out: for a reader that polls on a timer rather than waking per event."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._items: collections.deque[RequestEvent | JobEvent] = collections.deque(maxlen=maxlen)
        self._offered = 0

    def offer(self, event: RequestEvent | JobEvent) -> None:
        self._items.append(event)  # a full deque drops its oldest item itself
        self._offered += 1

    def take(self) -> tuple[list[RequestEvent | JobEvent], int]:
        """The events held, oldest first, and how many were lost to the bound; empties it."""
        items = list(self._items)
        lost = self._offered - len(items)
        self._items.clear()
        self._offered = 0
        return items, lost


class RequestFeed:
    """Fan-out of :data:`FeedItem` s to any number of bounded subscriber streams and rings."""

    def __init__(self) -> None:
        self._subscribers: list[_Subscriber | Ring] = []

    @property
    def active(self) -> bool:
        """Is anybody listening? Check it before building an event (the common case: no)."""
        return bool(self._subscribers)

    def publish(self, event: RequestEvent | JobEvent) -> None:
        """Hand ``event`` to every subscriber; never blocks, never raises."""
        for subscriber in self._subscribers:
            subscriber.offer(event)

    @contextlib.contextmanager
    def ring(self, maxlen: int = DEFAULT_BUFFER) -> Iterator[Ring]:
        """A :class:`Ring` of the events published from now on, while the block runs."""
        ring = Ring(maxlen)
        self._subscribers.append(ring)
        try:
            yield ring
        finally:
            self._subscribers.remove(ring)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, max_buffer: int = DEFAULT_BUFFER
    ) -> AsyncIterator[MemoryObjectReceiveStream[FeedItem]]:
        """A stream of the events published from now on, while the block runs.

        At most ``max_buffer`` (>= 2) items wait unread; past that the oldest are dropped
        and a :class:`Dropped` notice precedes the next event.
        """
        if max_buffer < 2:
            raise ValueError("max_buffer must be at least 2 (an event and a Dropped notice)")
        send, receive = anyio.create_memory_object_stream[FeedItem](max_buffer)
        subscriber = _Subscriber(send, receive.clone(), max_buffer)
        self._subscribers.append(subscriber)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.remove(subscriber)
            subscriber.send.close()
            subscriber.tap.close()


def _offer(subscriber: _Subscriber, event: RequestEvent | JobEvent) -> None:
    send = subscriber.send
    try:
        send.send_nowait(event)
        return
    except anyio.WouldBlock:
        pass
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        return  # the subscription is ending: nothing to deliver to
    # Full: the reader is behind. Take everything out (no reader is waiting, or the buffer
    # would not be full), drop the older half, and put back a notice, the newer half and the
    # event. The notice then sits exactly where the gap is, and emptying half the buffer at a
    # time keeps this O(1) per event, amortised, while a reader stays stalled.
    items: list[FeedItem] = []
    with contextlib.suppress(anyio.WouldBlock):
        while True:
            items.append(subscriber.tap.receive_nowait())
    drop = max(len(items) // 2, len(items) - (subscriber.max_buffer - 2))
    lost = sum(item.count if isinstance(item, Dropped) else 1 for item in items[:drop])
    for item in (Dropped(lost), *items[drop:], event):
        send.send_nowait(item)


# -- building events (pure) -------------------------------------------------------------------


class _SpanLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def attributes(self) -> dict[str, Any]: ...


def worker_start(spans: Iterable[_SpanLike]) -> str | None:
    """``"cold"`` or ``"warm"`` from a request's runtime span, if a worker ran it."""
    for span in spans:
        if span.name == "runtime":
            start = span.attributes.get("start")
            return start if isinstance(start, str) else None
    return None


def request_event(
    *,
    at: float,
    request_id: str,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    function: str | None,
    principal: str | None,
    gateway_span: Mapping[str, Any],
    spans: Iterable[_SpanLike] = (),
    logs: Iterable[LogLine] = (),
    message: str | None = None,
) -> RequestEvent:
    """The event for one answered request, from what the gateway accumulated for its trace
    (the gateway span's attributes give the error code and whether it was queued)."""
    spans = list(spans)
    error = gateway_span.get("error")
    for span in spans:  # a failed call: its span has the code and message (stored traces)
        if span.name == "function" and span.attributes.get("error"):
            error = error or span.attributes["error"]
            told = span.attributes.get("message")
            message = message or (told if isinstance(told, str) else None)
    return RequestEvent(
        at=at,
        request_id=request_id,
        method=method,
        path=path,
        status=status,
        duration_ms=duration_ms,
        function=function,
        start=worker_start(spans),
        principal=principal,
        error=error if isinstance(error, str) else None,
        message=message,
        logs=logs,
        queued=bool(gateway_span.get("queued")),
    )


def exchange_event(ex: Exchange, status: int, duration_ms: float) -> RequestEvent:
    """The live event of one answered request, from what the pipeline learnt about it."""
    return request_event(
        at=ex.started,
        request_id=ex.request_id,
        method=ex.method,
        path=ex.path,
        status=status,
        duration_ms=duration_ms,
        function=ex.function,
        principal=ex.principal.name if ex.principal is not None else None,
        gateway_span=ex.span,
        spans=ex.extra_spans,
        logs=ex.logs,
        message=ex.message,
    )


def job_event(event: QueueEvent) -> JobEvent:
    """The live event for one dispatcher event (:meth:`fluxgw.queue.JobQueue.run_dispatcher`)."""
    logs: tuple[LogLine, ...] = ()
    start = None
    status = event.status
    if event.result is not None:
        result = event.result
        logs, start, status = result.logs, ("cold" if result.cold_start else "warm"), result.status
    elif isinstance(event.failure, FunctionFailed):
        logs = event.failure.logs
    delay = event.retry_in_s
    return JobEvent(
        at=event.at,
        request_id=event.job.request_id,
        function=event.function,
        event=event.kind,
        attempt=event.attempt,
        max_attempts=event.max_attempts,
        status=status,
        duration_ms=event.duration_ms if event.kind != "running" else None,
        start=start,
        error=event.error or None,
        retry_in_s=delay if delay is not None and math.isfinite(delay) else None,
        logs=logs,
    )
