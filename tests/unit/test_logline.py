"""Request log lines (fluxgw.logline): what `flux dev`, `serve --log-requests` and `flux logs`
print for each request, refusal and job step."""

from __future__ import annotations

import io
import json
from datetime import UTC

import pytest

from fluxgw.feed import Dropped, JobEvent, RequestEvent
from fluxgw.logline import (
    HEAD_LINES,
    MAX_LINE_CHARS,
    TAIL_LINES,
    Style,
    event_from_trace,
    refusal_reason,
    render,
    render_json,
    use_color,
)
from fluxgw.runtime.api import LogLine
from fluxgw.tracing import Span, TraceRecord

UTC_STYLE = Style(tz=UTC)
RID = "9c3e7f1a5d0b4e2c8a7f6e5d4c3b2a19"
AT = 1764165787.123  # 2025-11-26T14:03:07.123Z
RATE_MESSAGE = "rate limit of the free plan exceeded (120/min, burst 120); retry in 12 s"


def request(**fields) -> RequestEvent:
    base = {
        "at": AT,
        "request_id": RID,
        "method": "GET",
        "path": "/hello/python",
        "status": 200,
        "duration_ms": 3.21,
        "function": "hello_python",
        "start": "warm",
        "principal": "laptop",
    }
    return RequestEvent(**{**base, **fields})


def out(*texts: str, stream: str = "stdout") -> tuple[LogLine, ...]:
    return tuple(LogLine(AT, stream, text) for text in texts)


def test_a_request_line_then_its_output_indented():
    text = render(request(logs=out("greeting Ada", "second")), UTC_STYLE)
    assert text == (
        "14:03:07.123  9c3e7f1a  GET /hello/python  200  3.2 ms  hello_python warm\n"
        "    greeting Ada\n"
        "    second\n"
    )


@pytest.mark.parametrize(
    ("status", "code", "message", "shown"),
    [
        (429, "rate_limited", RATE_MESSAGE, "429 rate limited: free plan, retry in 12 s"),
        (401, "missing_key", "missing Authorization header", "401 no API key"),
        (401, "revoked_key", "this API key has been revoked", "401 revoked API key"),
        (403, "key_not_for_function", "...", "403 key not scoped to this function"),
        (404, "not_found", "no function at GET /nope", "404 no route"),
        (
            404,
            "not_found",
            "no function at GET /hello (served methods: POST, PUT)",
            "404 no route for this method (POST, PUT)",
        ),
        (401, "token_expired", "the token expired", "401 token expired"),  # an unknown code
        (
            502,
            "function_error",
            "ZeroDivisionError: division by zero",
            "502 function_error: ZeroDivisionError: division by zero",
        ),
    ],
)
def test_refusals_and_failures_say_why_in_a_few_words(status, code, message, shown):
    line = render(
        request(status=status, error=code, message=message, function=None, start=None), UTC_STYLE
    )
    assert line == f"14:03:07.123  9c3e7f1a  GET /hello/python  {shown}  3.2 ms\n"


def test_rate_limit_reason_without_details():
    assert refusal_reason(429, "rate_limited", None) == "rate limited"


def test_a_502_shows_its_error_and_traceback_lines():
    traceback = out(
        "Traceback (most recent call last):", '  File "main.py", line 2', stream="stderr"
    )
    text = render(
        request(status=502, error="function_error", message="RuntimeError: boom", logs=traceback),
        UTC_STYLE,
    )
    lines = text.splitlines()
    assert "502 function_error: RuntimeError: boom" in lines[0]
    assert lines[1:] == ["    Traceback (most recent call last):", '      File "main.py", line 2']


def test_a_flood_of_output_is_cut_with_a_pointer_to_the_trace():
    logs = out(*(f"line {n}" for n in range(5000)))
    lines = render(request(logs=logs), UTC_STYLE).splitlines()
    assert len(lines) == 1 + HEAD_LINES + 1 + TAIL_LINES
    assert lines[1] == "    line 0" and lines[HEAD_LINES] == f"    line {HEAD_LINES - 1}"
    cut = 5000 - HEAD_LINES - TAIL_LINES
    assert lines[HEAD_LINES + 1] == f"    … {cut} more lines: flux trace 9c3e7f1a"
    assert lines[-1] == "    line 4999"


def test_a_very_long_line_is_cut():
    lines = render(request(logs=out("x" * 10_000)), UTC_STYLE).splitlines()
    assert (
        lines[1] == "    " + "x" * MAX_LINE_CHARS + f"… ({10_000 - MAX_LINE_CHARS} more characters)"
    )


def test_control_characters_cannot_repaint_the_terminal_or_fake_a_line():
    sneaky = out("\x1b[2Jcleared\r14:00:00.000  00000000  GET /admin  200")
    text = render(request(path="/a\x1b[31m", logs=sneaky), UTC_STYLE)
    assert "\x1b" not in text and "\r" not in text
    assert text.count("\n") == 2
    assert "\\x1b[2Jcleared\\x0d14:00" in text


def test_colours_by_status_class_only_when_asked():
    assert "\x1b[" not in render(request(status=500, error="internal_error"), UTC_STYLE)
    colour = Style(color=True, tz=UTC)
    assert "\x1b[32m200\x1b[0m" in render(request(), colour)
    assert "\x1b[36m304" in render(request(status=304), colour)
    assert "\x1b[33m404 no route" in render(request(status=404, error="not_found"), colour)
    assert "\x1b[31m502" in render(request(status=502, error="function_error"), colour)


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_use_color_needs_a_terminal_and_no_NO_COLOR():
    assert use_color(FakeTty(), {}) is True
    assert use_color(FakeTty(), {"NO_COLOR": "1"}) is False
    assert use_color(FakeTty(), {"NO_COLOR": ""}) is True  # no-color.org: set and non-empty
    assert use_color(io.StringIO(), {}) is False


def test_async_requests_and_job_steps():
    assert "202 queued  3.2 ms  resize" in render(
        request(
            path="/resize", method="POST", status=202, queued=True, function="resize", start=None
        ),
        UTC_STYLE,
    )
    base = {"at": AT, "request_id": RID, "function": "resize", "max_attempts": 3}
    started = JobEvent(event="running", attempt=1, **base)
    assert render(started, UTC_STYLE) == "14:03:07.123  9c3e7f1a  job resize  attempt 1/3 started\n"
    retry = JobEvent(
        event="retry",
        attempt=1,
        status=502,
        error="function_error: boom",
        retry_in_s=1.26,
        logs=out("partial"),
        **base,
    )
    assert render(retry, UTC_STYLE).splitlines() == [
        "14:03:07.123  9c3e7f1a  job resize  attempt 1/3 failed: function_error: boom; "
        "retry in 1.3 s",
        "    partial",
    ]
    done = JobEvent(
        event="succeeded", attempt=2, status=200, duration_ms=41.0, start="cold", **base
    )
    assert render(done, UTC_STYLE).endswith("attempt 2/3 succeeded: 200 in 41.0 ms (cold)\n")
    failed = JobEvent(
        event="failed",
        attempt=3,
        error="function_timeout: too slow (gave up after 3 attempts)",
        **base,
    )
    assert "attempt 3/3 failed: function_timeout: too slow (gave up after 3 attempts)" in render(
        failed, UTC_STYLE
    )


def test_a_gap_in_the_feed_is_announced():
    assert "… 17 events not shown" in render(Dropped(17), UTC_STYLE)
    assert json.loads(render_json(Dropped(17))) == {"type": "dropped", "count": 17}


def test_json_is_one_parseable_line_with_bounded_output():
    logs = out(*(f"l{n}" for n in range(200)))
    line = render_json(request(logs=logs, status=429, error="rate_limited", message=RATE_MESSAGE))
    assert "\n" not in line
    data = json.loads(line)
    assert data["type"] == "request" and data["status"] == 429
    assert data["time"] == "2025-11-26T14:03:07.123Z" and data["ts"] == AT
    assert data["principal"] == "laptop"
    assert len(data["logs"]) == HEAD_LINES + TAIL_LINES
    assert data["logs_omitted"] == 200 - HEAD_LINES - TAIL_LINES
    assert data["logs"][-1]["text"] == "l199"


def test_a_stored_trace_renders_like_a_live_request():
    trace = TraceRecord(
        request_id=RID,
        started_at=AT,
        method="GET",
        path="/hello/python",
        status=502,
        duration_ms=3.21,
        trace_id="a" * 32,
        function="hello_python",
        key_name="laptop",
        spans=[
            Span("gateway", AT, 3.2, {"auth": "ok", "key": "laptop", "error": "function_error"}),
            Span("runtime", AT, 0.1, {"start": "cold"}),
            Span("function", AT, 1.0, {"error": "function_error", "message": "KeyError: 'x'"}),
        ],
        logs=list(out("before the crash")),
    )
    event = event_from_trace(trace)
    assert render(event, UTC_STYLE) == (
        "14:03:07.123  9c3e7f1a  GET /hello/python  502 function_error: KeyError: 'x'  3.2 ms  "
        "hello_python cold\n"
        "    before the crash\n"
    )
