"""Request log lines: what `flux dev`, `flux serve --log-requests` and `flux logs` print.

Pure functions from feed items (:mod:`fluxgw.feed`) to text; the callers do the writing. One
line per request, the function's output indented under it, one line per async-job step:

    14:03:07.123  9c3e7f1a  GET /hello/python  200  3.2 ms  hello_python warm
        greeting Ada
    14:03:07.301  5b1c0d2e  GET /hello/python  429 rate limited: free plan, retry in 12 s  0.1 ms

Times are the machine's local time of day (it is a terminal, next to the user's clock); the
JSON form has ISO 8601 UTC. Every text field is stripped of control characters, so a function
printing escape sequences cannot repaint the terminal or fake a request line. See docs/logs.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any, TextIO

import attrs
import orjson

from .feed import FeedItem, JobEvent, RequestEvent, request_event
from .runtime.api import LogLine
from .trace_render import format_time
from .tracing import TraceRecord

__all__ = [
    "HEAD_LINES",
    "MAX_LINE_CHARS",
    "TAIL_LINES",
    "Style",
    "event_from_trace",
    "refusal_reason",
    "render",
    "render_json",
    "use_color",
]

HEAD_LINES = 40  # output lines shown from the start of a request's output...
TAIL_LINES = 10  # ...and from its end (a traceback is at the end), the rest summarised
MAX_LINE_CHARS = 500  # one output line longer than this is cut
ID_CHARS = 8  # request id prefix shown: enough for `flux trace` (which needs >= 6)
INDENT = "    "

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_PLAN = re.compile(r"\bthe (\w+) plan\b")
_RETRY = re.compile(r"\bretry in (\d+) s\b")

# ANSI SGR codes by status class; the rest of the line stays in the terminal's own colour.
_GREEN, _CYAN, _YELLOW, _RED, _DIM = "32", "36", "33", "31", "2"

# Refusals (4xx) in a few words, by error code. Unknown codes read as their words.
_REASONS = {
    "missing_key": "no API key",
    "not_bearer": "not a Bearer token",
    "malformed_key": "malformed API key",
    "unknown_key": "unknown API key",
    "revoked_key": "revoked API key",
    "wrong_project": "key of another project",
    "key_not_for_function": "key not scoped to this function",
    "forbidden": "needs an unscoped key",
    "not_found": "no route",
    "payload_too_large": "body too large",
    "request_timeout": "body too slow",
    "bad_request": "bad request",
    "client_closed": "client went away",
}


@attrs.frozen
class Style:
    """How to render: ANSI colours or not, and the time zone of the time column."""

    color: bool = False
    tz: tzinfo | None = None  # None: the machine's local time


def use_color(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colours only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def clean(text: str) -> str:
    """``text`` on one line with control characters made visible (``\\x1b``); tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _paint(text: str, code: str, style: Style) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if style.color else text


def _status_color(status: int | None) -> str:
    if status is None or status >= 500:
        return _RED
    if status >= 400:
        return _YELLOW
    if status >= 300:
        return _CYAN
    return _GREEN


def _clock(at: float, style: Style) -> str:
    return datetime.fromtimestamp(at, style.tz).strftime("%H:%M:%S.%f")[:-3]


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def refusal_reason(status: int, code: str | None, message: str | None) -> str:
    """A refusal or failure in a few words: ``rate limited: free plan, retry in 12 s``.

    4xx answers get a fixed phrase per error code (the rate limit adds its plan and wait);
    5xx ones the error code and the gateway's message (``function_error: ZeroDivisionError``).
    """
    message = message or ""
    if code == "rate_limited":
        plan, retry = _PLAN.search(message), _RETRY.search(message)
        details = [
            f"{plan.group(1)} plan" if plan else "",
            f"retry in {retry.group(1)} s" if retry else "",
        ]
        shown = ", ".join(d for d in details if d)
        return f"rate limited: {shown}" if shown else "rate limited"
    if code is None:
        return ""
    if status >= 500:
        first = message.splitlines()[0] if message else ""
        return f"{code}: {first}" if first else code
    if code == "not_found" and "served methods:" in message:
        return f"no route for this method ({message.split('served methods:', 1)[1].strip(' )')})"
    return _REASONS.get(code, code.replace("_", " "))


def _output(logs: tuple[LogLine, ...], request_id: str, style: Style) -> list[str]:
    """The function's output lines, indented; a long output shows its head and tail."""
    if len(logs) > HEAD_LINES + TAIL_LINES:
        omitted = len(logs) - HEAD_LINES - TAIL_LINES
        shown: list[LogLine | None] = [*logs[:HEAD_LINES], None, *logs[-TAIL_LINES:]]
    else:
        omitted, shown = 0, list(logs)
    out = []
    for line in shown:
        if line is None:
            note = f"… {omitted} more lines: flux trace {request_id[:ID_CHARS]}"
            out.append(INDENT + _paint(note, _DIM, style))
            continue
        text = clean(line.text)
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + f"… ({len(text) - MAX_LINE_CHARS} more characters)"
        out.append(INDENT + (_paint(text, _RED, style) if line.stream == "stderr" else text))
    return out


def _request(event: RequestEvent, style: Style) -> list[str]:
    status = str(event.status)
    if event.queued:
        status += " queued"
    elif event.status >= 400 or event.error:
        reason = refusal_reason(event.status, event.error, event.message)
        status += f" {clean(reason)}" if reason else ""
    parts = [
        _clock(event.at, style),
        event.request_id[:ID_CHARS],
        f"{event.method} {clean(event.path)}",
        _paint(status, _status_color(event.status), style),
        _ms(event.duration_ms),
    ]
    if event.function:
        parts.append(f"{event.function} {event.start}" if event.start else event.function)
    return ["  ".join(parts), *_output(event.logs, event.request_id, style)]


def _job(event: JobEvent, style: Style) -> list[str]:
    # max_attempts is 0 when `flux logs` missed the step that said which attempt this was
    attempt = f"attempt {event.attempt}/{event.max_attempts}" if event.max_attempts else "job"
    if event.event == "running":
        what, color = f"{attempt} started", _DIM
    elif event.event == "succeeded":
        took = f" in {_ms(event.duration_ms)}" if event.duration_ms is not None else ""
        start = f" ({event.start})" if event.start else ""
        what, color = f"{attempt} succeeded: {event.status}{took}{start}", _GREEN
    elif event.event == "retry":
        wait = f"; retry in {event.retry_in_s:.1f} s" if event.retry_in_s is not None else ""
        what, color = f"{attempt} failed: {clean(event.error or '?')}{wait}", _YELLOW
    else:
        what, color = f"{attempt} {clean(event.event)}: {clean(event.error or '?')}", _RED
    head = "  ".join(
        [
            _clock(event.at, style),
            event.request_id[:ID_CHARS],
            f"job {event.function}",
            _paint(what, color, style),
        ]
    )
    return [head, *_output(event.logs, event.request_id, style)]


def render(item: FeedItem, style: Style = Style()) -> str:
    """The lines for one feed item, each ending with a newline."""
    if isinstance(item, RequestEvent):
        lines = _request(item, style)
    elif isinstance(item, JobEvent):
        lines = _job(item, style)
    else:
        note = f"… {item.count} events not shown: the log fell behind (flux logs has them)"
        lines = [_paint(note, _DIM, style)]
    return "\n".join(lines) + "\n"


def render_json(item: FeedItem) -> str:
    """One JSON object on one line (``--log-format json``, ``flux logs --json``); the output
    lines are bounded like the text form, with ``logs_omitted`` counting the rest."""
    data: dict[str, Any] = item.to_json()
    if "time" in data:  # shippers want a readable time; the epoch stays as "ts"
        data = {
            "type": data.pop("type"),
            "time": format_time(data["time"]),
            "ts": data.pop("time"),
            **data,
        }
    logs = data.get("logs")
    if isinstance(logs, list) and len(logs) > HEAD_LINES + TAIL_LINES:
        data["logs_omitted"] = len(logs) - HEAD_LINES - TAIL_LINES
        data["logs"] = [*logs[:HEAD_LINES], *logs[-TAIL_LINES:]]
    # orjson: about 4x faster than json.dumps here, and this runs once per request.
    return orjson.dumps(data, default=str).decode()


def event_from_trace(trace: TraceRecord) -> RequestEvent:
    """A stored trace as the feed's request event (`flux logs` reads the trace store)."""
    gateway: Mapping[str, Any] = next(
        (span.attributes for span in trace.spans if span.name == "gateway"), {}
    )
    return request_event(
        at=trace.started_at,
        request_id=trace.request_id,
        method=trace.method,
        path=trace.path,
        status=trace.status,
        duration_ms=trace.duration_ms,
        function=trace.function,
        principal=trace.key_name,
        gateway_span={**gateway, "queued": trace.async_state is not None},
        spans=trace.spans,
        logs=trace.logs,
    )


def render_all(items: Iterable[FeedItem], style: Style, *, as_json: bool) -> str:
    """Several items at once, in the chosen format (one write for a batch)."""
    if as_json:
        return "".join(render_json(item) + "\n" for item in items)
    return "".join(render(item, style) for item in items)
