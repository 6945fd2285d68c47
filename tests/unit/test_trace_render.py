"""Text views of traces: the waterfall of `flux trace ID` and the `--last N` table."""

from __future__ import annotations

import json

from fluxgw.runtime.api import LogLine
from fluxgw.trace_render import format_time, render_list, render_trace, trace_to_json
from fluxgw.tracing import Span, TraceRecord

T0 = 1_700_000_000.0


def make_trace(**changes) -> TraceRecord:
    fields = dict(
        request_id="0123456789abcdef0123456789abcdef",
        started_at=T0,
        method="POST",
        path="/create_order",
        status=201,
        duration_ms=40.0,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        function="create_order",
        key_name="ci-key",
        client_request_id="client-42",
        traceparent_in="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        spans=[
            Span("gateway", T0, 2.0, {"auth": "ok", "rate_limit_remaining": 119, "cors": "none"}),
            Span("runtime", T0 + 0.002, 8.0, {"worker_pid": 4242, "cold_start": True}),
            Span("function", T0 + 0.010, 30.0, {"status": 201}),
        ],
        logs=[
            LogLine(T0 + 0.012, "stdout", "creating order"),
            LogLine(T0 + 0.035, "stderr", "done"),
        ],
    )
    fields.update(changes)
    return TraceRecord(**fields)


def test_waterfall_has_header_spans_offsets_and_logs():
    text = render_trace(make_trace())
    assert "0123456789abcdef0123456789abcdef" in text
    assert format_time(T0) == "2023-11-14T22:13:20.000Z" and format_time(T0) in text
    assert "POST /create_order -> 201 in 40.0 ms" in text
    assert "create_order" in text and "ci-key" in text and "client-42" in text
    assert "00f067aa0ba902b7" in text  # the incoming traceparent
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1] and "█" in line}
    assert set(rows) == {"gateway", "runtime", "function"}
    assert "+0.0 ms" in rows["gateway"] and "2.0 ms" in rows["gateway"]
    assert "+10.0 ms" in rows["function"] and "30.0 ms" in rows["function"]
    assert "worker_pid=4242 cold_start=true" in text
    assert "rate_limit_remaining=119" in text
    assert "+12.0 ms  stdout  creating order" in text
    assert "+35.0 ms  stderr  done" in text


def test_waterfall_bars_are_placed_and_scaled_to_the_width():
    text = render_trace(make_trace(), width=100)
    assert all(len(line) <= 100 for line in text.splitlines())
    bars = {line.split()[0]: line.index("█") for line in text.splitlines() if "█" in line}
    # Later spans start further right; the function span (the last 75 %) is the longest.
    assert bars["gateway"] < bars["runtime"] < bars["function"]
    function_row = next(
        line for line in text.splitlines() if line.startswith("function ") and "█" in line
    )
    assert function_row.count("█") > 20


def test_waterfall_without_spans_or_logs_and_async_state():
    text = render_trace(make_trace(spans=[], logs=[], async_state="failed", key_name=None))
    assert "(no spans recorded)" in text and "logs: none" in text and "failed" in text
    assert "api key" not in text


def test_list_has_columns_newest_first_as_given():
    traces = [make_trace(), make_trace(request_id="f" * 32, status=202, async_state="queued")]
    lines = render_list(traces).splitlines()
    assert lines[0].split() == ["ID", "TIME", "METHOD", "PATH", "STATUS", "DURATION"]
    assert lines[1].startswith("0123456789abcdef0123456789abcdef")
    assert "2023-11-14T22:13:20.000Z" in lines[1] and "POST" in lines[1] and "40.0 ms" in lines[1]
    assert "202 (queued)" in lines[2]
    assert render_list([]) == "no traces recorded yet\n"


def test_json_is_serialisable():
    data = trace_to_json(make_trace())
    assert json.loads(json.dumps(data))["spans"][1]["attributes"]["worker_pid"] == 4242
