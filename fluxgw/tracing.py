"""Request ids, W3C trace context, and the trace value classes
(docs/reference.md#request-ids-and-traces).

Every request gets a fresh 128-bit id of the gateway's own (a client's ``x-request-id`` is
recorded, never trusted) and a ``traceparent`` for its function, continuing the caller's trace
when it sent a valid one. What happened to the request is a :class:`TraceRecord` of
:class:`Span` s and the function's log lines; :mod:`fluxgw.tracestore` writes them to disk.
"""

from __future__ import annotations

import os
import re
import threading
from typing import TYPE_CHECKING, Any

import attrs

from .errors import FluxError
from .runtime.api import FunctionFailed, InvocationResult, LogLine

if TYPE_CHECKING:
    from .exchange import Exchange
    from .jobs import QueueEvent

SPAN_NAMES = ("gateway", "queue", "runtime", "function")

# version "-" trace-id "-" parent-id "-" flags, lower-case hex only (W3C Trace Context §3.2).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


class _RandomHex:
    """Random hex strings from os.urandom, read 4 KiB at a time.

    Every request needs 128 random bits (request id) and often 192 more (trace and span ids);
    one getrandom() call per 4 KiB instead of one per id. The bytes are the kernel's CSPRNG
    output either way, and the gateway never forks (workers are exec'd), so no copy of the
    buffer is ever shared.
    """

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._buffer = b""
        self._offset = 0
        self._lock = threading.Lock()  # two threads must never get the same bytes

    def __call__(self, nbytes: int) -> str:
        with self._lock:
            if self._offset + nbytes > len(self._buffer):
                self._buffer, self._offset = os.urandom(self._chunk), 0
            start = self._offset
            self._offset += nbytes
            return self._buffer[start : start + nbytes].hex()


_random_hex = _RandomHex()


def new_request_id() -> str:
    """A fresh request id: 32 lower-case hex chars (128 random bits), unique in practice."""
    return _random_hex(16)


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, parent_span_id)`` from a ``traceparent`` header, or None if it is invalid.

    Invalid: wrong shape, upper-case hex, version ``ff``, an all-zero trace or span id. A future
    version (not 00) may append fields after the flags; version 00 must end there.
    """
    if not value:
        return None
    value = value.strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, _flags = match.groups()
    rest = value[match.end() :]
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_SPAN_ID:
        return None
    return trace_id, parent_id


def new_traceparent(trace_id: str | None = None) -> tuple[str, str]:
    """The ``traceparent`` to hand the function, and its trace id.

    ``trace_id`` continues the caller's trace (from :func:`parse_traceparent`); without it a
    new trace starts. The header names a fresh span, the gateway's: the caller's own span id
    is kept in the trace as the incoming traceparent. The sampled flag is set: the gateway
    records every request.
    """
    if trace_id is not None and not _TRACE_ID.fullmatch(trace_id):
        # Tolerate a whole header passed by mistake; anything else invalid starts a new trace.
        parsed = parse_traceparent(trace_id)
        trace_id = parsed[0] if parsed else None
    trace = trace_id if trace_id and trace_id != _ZERO_TRACE_ID else _random_hex(16)
    span = _random_hex(8)
    while span == _ZERO_SPAN_ID:  # 1 in 2**64, but the spec forbids it
        span = _random_hex(8)
    return f"00-{trace}-{span}-01", trace


@attrs.frozen
class Span:
    """One timed step of a request: ``gateway``, ``queue``, ``runtime`` or ``function``.

    ``attributes`` are JSON-able facts about the step (auth result, remaining quota, worker
    pid, cold start...). Never an API key: the gateway only ever passes the key's name.
    """

    name: str
    start: float  # epoch seconds
    duration_ms: float
    attributes: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start,
            "duration_ms": self.duration_ms,
            "attributes": self.attributes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Span:
        return cls(
            name=data["name"],
            start=float(data["start"]),
            duration_ms=float(data["duration_ms"]),
            attributes=dict(data.get("attributes") or {}),
        )


@attrs.define
class TraceRecord:
    """Everything recorded about one request; built by the gateway as the request goes."""

    request_id: str
    started_at: float  # epoch seconds
    method: str
    path: str
    status: int
    duration_ms: float
    trace_id: str
    function: str | None = None
    key_name: str | None = None
    client_request_id: str | None = None
    traceparent_in: str | None = None
    spans: list[Span] = attrs.field(factory=list)
    logs: list[LogLine] = attrs.field(factory=list)
    async_state: str | None = None


def request_trace(ex: Exchange, status: int, duration_ms: float) -> TraceRecord:
    """The trace of one answered request: the gateway span, then what the invocation added."""
    gateway_span = Span(
        name="gateway", start=ex.started, duration_ms=duration_ms, attributes=ex.span
    )
    traceparent = ex.headers.get("traceparent")
    return TraceRecord(
        request_id=ex.request_id,
        started_at=ex.started,
        method=ex.method,
        path=ex.path,
        status=status,
        duration_ms=duration_ms,
        function=ex.function,
        key_name=ex.key_name,
        client_request_id=ex.headers.get("x-request-id"),
        traceparent_in=traceparent,
        # a request refused before dispatch still joins the caller's trace, if it sent one
        trace_id=ex.trace_id or (parse_traceparent(traceparent) or ("",))[0],
        spans=[gateway_span, *ex.extra_spans],
        logs=list(ex.logs),
        async_state="queued" if ex.queued else None,
    )


def invocation_spans(
    *,
    end: float,
    result: InvocationResult | None = None,
    failure: FunctionFailed | None = None,
    started: float | None = None,
    function: str | None = None,
) -> list[Span]:
    """The ``runtime`` and ``function`` spans of one invocation that ended at ``end``.

    A result tells where its time went (waiting for a worker, cold start, the call), so both
    spans are placed back from ``end``; a failure only has its start (``started``).
    """
    if result is not None:
        setup_ms = result.queued_ms + result.startup_ms
        runtime = Span(
            "runtime",
            end - (setup_ms + result.run_ms) / 1000,
            setup_ms,
            {
                "worker_pid": result.worker_pid,
                "start": "cold" if result.cold_start else "warm",
                "waited_ms": round(result.queued_ms, 3),
            },
        )
        attributes: dict[str, Any] = {"status": result.status, "function": function}
        return [runtime, Span("function", end - result.run_ms / 1000, result.run_ms, attributes)]
    if failure is not None:
        begin = end if started is None else started
        attributes = {
            "status": failure.status,
            "error": failure.code,
            "message": failure.message,
            "worker_pid": failure.worker_pid,
        }
        return [Span("function", begin, (end - begin) * 1000, attributes)]
    return []


def queue_event_trace(event: QueueEvent) -> tuple[str, list[Span], list[LogLine]]:
    """What one dispatcher event adds to its request's trace: the async state, spans and the
    function's log lines.

    ``running`` adds a ``queue`` span for the wait before the attempt; ``succeeded`` the
    runtime and function spans of the result; ``retry`` and ``failed`` a ``queue`` span naming
    the outcome (and when the next attempt is) and the failed function span.
    """
    at = event.at
    attempt = {"attempt": event.attempt, "max_attempts": event.max_attempts}
    if event.kind == "running":
        return "running", [Span("queue", at - event.wait_ms / 1000, event.wait_ms, attempt)], []
    spans: list[Span] = []
    if event.kind in ("retry", "failed"):
        outcome: dict[str, Any] = {**attempt, "outcome": event.kind}
        if event.retry_in_s is not None:
            outcome["retry_in_s"] = round(event.retry_in_s, 3)
        if event.error:
            outcome["error"] = event.error
        spans.append(Span("queue", at, 0.0, outcome))
    logs: list[LogLine] = []
    if event.result is not None:
        spans.extend(invocation_spans(end=at, result=event.result, function=event.function))
        logs = list(event.result.logs)
    elif isinstance(event.failure, FunctionFailed):
        started = at - event.duration_ms / 1000
        spans.extend(invocation_spans(end=at, failure=event.failure, started=started))
        logs = list(event.failure.logs)
    return ("queued" if event.kind == "retry" else event.kind), spans, logs


def log_to_json(line: LogLine) -> dict[str, Any]:
    """A log line as a JSON object (its attrs fields)."""
    return attrs.asdict(line, recurse=False)


def log_from_json(data: dict[str, Any]) -> LogLine:
    return LogLine(**data)


def trace_to_json(trace: TraceRecord) -> dict[str, Any]:
    """The trace as JSON (``flux trace --json`` and the store's columns share this shape)."""
    return {
        "request_id": trace.request_id,
        "started_at": trace.started_at,
        "method": trace.method,
        "path": trace.path,
        "status": trace.status,
        "duration_ms": trace.duration_ms,
        "function": trace.function,
        "key_name": trace.key_name,
        "client_request_id": trace.client_request_id,
        "traceparent_in": trace.traceparent_in,
        "trace_id": trace.trace_id,
        "async_state": trace.async_state,
        "spans": [span.to_json() for span in trace.spans],
        "logs": [log_to_json(line) for line in trace.logs],
    }


class TraceNotFound(FluxError):
    """No trace with that id (or prefix): maybe older than the retention, or a typo."""


class TracePrefixTooShort(FluxError, ValueError):
    """A prefix under 6 characters would match too many traces to be useful."""


class AmbiguousPrefix(FluxError):
    """Several traces start with the prefix; ``candidates`` lets the CLI list them."""

    def __init__(self, prefix: str, candidates: list[tuple[str, float, str, str, int]]) -> None:
        shown = ", ".join(c[0] for c in candidates[:5])
        more = f" (and {len(candidates) - 5} more)" if len(candidates) > 5 else ""
        super().__init__(
            f"trace id prefix {prefix!r} matches {len(candidates)} traces: {shown}{more}; "
            "give more characters"
        )
        self.prefix = prefix
        self.candidates = candidates
