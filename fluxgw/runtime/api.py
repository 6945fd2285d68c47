"""The contract between the gateway and the runtime pool: plain values in, plain values out.

The gateway builds an :class:`Invocation` (the caller's ``Authorization`` already removed) and
calls ``PoolManager.invoke(spec, invocation)``; it gets an :class:`InvocationResult` or a
:class:`FunctionFailed` carrying the HTTP status, error code, message and the log lines
the function printed before failing.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class LogLine:
    """One line a function printed or logged, captured per invocation."""

    timestamp: float  # epoch seconds
    stream: str  # "stdout", "stderr", "log" (ctx.logger / console.*), "output" (raw fd 1/2)
    text: str


@attrs.frozen
class Invocation:
    """One request for a function, as the worker will see it."""

    request_id: str
    method: str
    path: str
    deadline: float  # epoch seconds (time.time()); the pool also caps it at spec.timeout
    function: str = ""  # informational; the pool uses the FunctionSpec's name
    url: str = ""  # full URL as the caller used it (scheme://host/path?query); "" = build one
    query_string: str = ""  # raw query (after "?"); decoded into pairs when ``query`` is empty
    query: tuple[tuple[str, str], ...] = ()  # decoded pairs, in order, repeats kept
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names; no API key
    body: bytes = b""
    traceparent: str | None = None
    trace_id: str = ""  # the W3C trace id in ``traceparent`` (recorded in the trace)
    # ``ctx.auth``: who called, {"type": "key", ...} or {"type": "jwt", ...} (docs/auth.md);
    # with "jwt", ``headers`` carries the caller's verified Authorization on purpose
    auth: dict[str, Any] | None = attrs.field(default=None, eq=False)


@attrs.frozen
class InvocationResult:
    """What the function answered, and where the time went."""

    status: int
    headers: tuple[tuple[str, str], ...]  # repeated names (Set-Cookie) stay separate pairs
    body: bytes
    logs: tuple[LogLine, ...] = ()
    worker_pid: int = 0
    cold_start: bool = False  # True when this invocation had to start its worker
    queued_ms: float = 0.0  # waiting for a free worker slot (max_workers busy)
    startup_ms: float = 0.0  # cold start (spawn to ready), 0 when warm
    run_ms: float = 0.0  # the call itself: request frame out to answer (or first chunk) in
    streaming: bool = False  # the body follows as a stream (PoolManager.open's Stream)


class FunctionFailed(Exception):
    """The function could not answer: 502 (crash, bad output, no runtime, memory), 503
    (``overloaded``: no capacity in time; it never ran) or 504 (timeout)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        logs: tuple[LogLine, ...] = (),
        worker_pid: int = 0,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.logs = logs
        self.worker_pid = worker_pid
        self.retry_after = retry_after  # seconds, for a 503's Retry-After

    def __repr__(self) -> str:
        return f"FunctionFailed({self.status}, {self.code!r}, {self.message!r})"
