"""Text views of traces for ``flux trace``: a waterfall for one, a table for several.

Pure functions from :class:`~fluxgw.tracing.TraceRecord` to ``str``; the CLI prints them.
Times are shown in UTC so the output does not depend on the machine it is read on.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .tracing import Span, TraceRecord, trace_to_json

__all__ = ["format_time", "render_list", "render_trace", "trace_to_json"]

BAR = "█"
_NAME_W, _OFFSET_W, _DURATION_W = 9, 11, 11  # "function ", "+12345.6 ms", "12345.6 ms"
_MIN_BAR = 10


def format_time(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. ``2025-03-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _bar(offset_ms: float, duration_ms: float, extent_ms: float, width: int) -> str:
    """Spaces up to the span's start, then at least one block for its length."""
    scale = width / extent_ms if extent_ms > 0 else 0.0
    lead = min(width - 1, int(offset_ms * scale))
    length = max(1, min(width - lead, round(duration_ms * scale)))
    return " " * lead + BAR * length


def render_trace(trace: TraceRecord, *, width: int = 80) -> str:
    """The request's header, a waterfall row per span (with its attributes), then the log
    lines its function printed, each at ``+offset`` from the start of the request."""
    lines = [
        f"request      {trace.request_id}",
        f"time         {format_time(trace.started_at)}",
        f"http         {trace.method} {trace.path} -> {trace.status} in {_ms(trace.duration_ms)}",
    ]
    if trace.function:
        lines.append(f"function     {trace.function}")
    if trace.key_name:
        lines.append(f"api key      {trace.key_name}")
    caller = next((s.attributes for s in trace.spans if s.name == "gateway"), {})
    if caller.get("mode") == "jwt":  # docs/auth.md: who, never the token
        kid = f", kid {caller['kid']}" if caller.get("kid") else ""
        lines.append(
            f"user token   {caller.get('subject')} ({caller.get('issuer') or 'no iss'}{kid})"
        )
    if trace.async_state:
        lines.append(f"async        {trace.async_state}")
    if trace.client_request_id:
        lines.append(f"client id    {trace.client_request_id}  (x-request-id sent by the client)")
    if trace.traceparent_in:
        lines.append(f"traceparent  {trace.traceparent_in}  (from the client)")
    lines.append(f"trace id     {trace.trace_id}")

    spans = sorted(trace.spans, key=lambda span: span.start)
    # An async trace's queue and function spans come after its 202: the waterfall spans them all.
    extent = max(
        [trace.duration_ms] + [(s.start - trace.started_at) * 1000 + s.duration_ms for s in spans]
    )
    bar_width = max(_MIN_BAR, width - _NAME_W - _OFFSET_W - _DURATION_W - 3)
    lines.append("")
    lines.append(f"{'span':<{_NAME_W}} {'offset':>{_OFFSET_W}} {'duration':>{_DURATION_W}}")
    for span in spans:
        lines.extend(_span_lines(span, trace.started_at, extent, bar_width, width))
    if not spans:
        lines.append("(no spans recorded)")

    lines.append("")
    if trace.logs:
        lines.append(f"logs ({len(trace.logs)})")
        for log in trace.logs:
            offset = (log.timestamp - trace.started_at) * 1000
            lines.append(f"  {'+' + _ms(offset):>{_OFFSET_W}}  {log.stream:<6}  {log.text}")
    else:
        lines.append("logs: none")
    return "\n".join(lines) + "\n"


def _span_lines(
    span: Span, trace_start: float, extent: float, bar_width: int, width: int
) -> list[str]:
    offset = (span.start - trace_start) * 1000
    row = (
        f"{span.name:<{_NAME_W}} {'+' + _ms(offset):>{_OFFSET_W}} "
        f"{_ms(span.duration_ms):>{_DURATION_W}} "
        f"{_bar(offset, span.duration_ms, extent, bar_width)}"
    )
    out = [row.rstrip()]
    if span.attributes:
        facts = " ".join(f"{key}={_value(value)}" for key, value in span.attributes.items())
        indent = " " * (_NAME_W + 1)
        out.extend(
            textwrap.wrap(
                facts,
                width=max(width, 40),
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
            )
        )
    return out


def render_list(traces: Iterable[TraceRecord]) -> str:
    """One row per trace (``flux trace --last N``): id, time, method, path, status, duration."""
    header = ("ID", "TIME", "METHOD", "PATH", "STATUS", "DURATION")
    rows = [
        (
            t.request_id,
            format_time(t.started_at),
            t.method,
            t.path,
            str(t.status) + (f" ({t.async_state})" if t.async_state else ""),
            _ms(t.duration_ms),
        )
        for t in traces
    ]
    if not rows:
        return "no traces recorded yet\n"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i != 5 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"
