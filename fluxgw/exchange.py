"""One request on its way through the gateway's pipeline: what the steps learn about it.

The steps in :mod:`fluxgw.gateway` fill it in; :func:`fluxgw.tracing.request_trace` turns it
into the request's trace and :mod:`fluxgw.feed` into its live event. The typed fields steer
the pipeline; ``span`` only collects the gateway span's attributes for the trace.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from .auth.principal import Principal
from .httpio import Headers
from .live import LiveState
from .runtime.api import FunctionFailed, InvocationResult, LogLine
from .runtime.pool import Stream
from .tracing import Span, invocation_spans


@attrs.define
class Exchange:
    request_id: str
    method: str
    path: str
    headers: dict[str, str]
    started: float  # epoch seconds, from the gateway's clock
    started_perf: float  # perf_counter, for the duration
    live: LiveState  # the state this request is served with, start to end
    preflight: bool = False  # answered as a CORS preflight (it gets no other CORS headers)
    queued: bool = False  # an async function's request, answered 202 once queued
    key_name: str | None = None  # the API key's name, when a key called
    principal: Principal | None = None  # who called (key or user token), once authenticated
    function: str | None = None  # the routed function
    rate_headers: Headers = attrs.Factory(list)
    span: dict[str, Any] = attrs.Factory(dict)  # attributes of the gateway span (trace only)
    extra_spans: list[Span] = attrs.Factory(list)
    logs: tuple[LogLine, ...] = ()
    trace_id: str = ""
    message: str | None = None  # an error answer's human text (for the request log)
    # A streamed answer: the pool's call stays open in ``resources`` until its body was sent.
    resources: contextlib.AsyncExitStack = attrs.Factory(contextlib.AsyncExitStack)
    stream: Stream | None = None
    result: InvocationResult | None = None  # the streamed answer's head

    def ran(
        self,
        end: float,
        *,
        result: InvocationResult | None = None,
        failure: FunctionFailed | None = None,
    ) -> None:
        """Record an invocation that ended at ``end``: its spans and its log lines."""
        self.extra_spans.extend(
            invocation_spans(
                end=end,
                result=result,
                failure=failure,
                started=self.started,
                function=self.function,
            )
        )
        outcome = result if result is not None else failure
        self.logs = outcome.logs if outcome is not None else ()
