"""Request ids and W3C traceparent handling (docs/reference.md#request-ids-and-traces)."""

from __future__ import annotations

import re

import pytest

from fluxgw.jobs import Job, QueueEvent
from fluxgw.runtime.api import FunctionFailed, Invocation, InvocationResult, LogLine
from fluxgw.tracing import (
    AmbiguousPrefix,
    Span,
    TracePrefixTooShort,
    TraceRecord,
    invocation_spans,
    new_request_id,
    new_traceparent,
    parse_traceparent,
    queue_event_trace,
    trace_to_json,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def queued_job(function: str, attempts: int, max_attempts: int = 3) -> Job:
    invocation = Invocation(request_id="e" * 32, method="POST", path="/jobs", deadline=1.0)
    return Job(
        "e" * 32, function, invocation, attempts, max_attempts, "running", 1.0,
        None, None, None, None, 1.0, 1.0,
    )  # fmt: skip


def test_request_ids_are_128_bit_hex_and_unique():
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(HEX32.fullmatch(i) for i in ids)


def test_parse_valid_traceparent():
    assert parse_traceparent(VALID) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has no extras
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    ],
)
def test_parse_invalid_traceparent(value):
    assert parse_traceparent(value) is None


def test_future_version_may_carry_extra_fields():
    value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever"
    assert parse_traceparent(value) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def test_new_traceparent_starts_a_trace():
    header, trace_id = new_traceparent()
    match = TRACEPARENT.fullmatch(header)
    assert match and match.group(1) == trace_id
    assert new_traceparent()[1] != trace_id


def test_new_traceparent_continues_the_callers_trace_with_a_new_span():
    trace_id, parent = parse_traceparent(VALID)
    header, kept = new_traceparent(trace_id)
    match = TRACEPARENT.fullmatch(header)
    assert kept == trace_id and match.group(1) == trace_id
    assert match.group(2) != parent  # the function's parent is the gateway's span


def test_new_traceparent_ignores_an_invalid_trace_id():
    header, trace_id = new_traceparent("not-hex")
    assert TRACEPARENT.fullmatch(header) and trace_id != "not-hex"
    assert new_traceparent("0" * 32)[1] != "0" * 32


def test_trace_to_json_round_trips_spans_and_logs():
    span = Span("gateway", 100.0, 1.5, {"auth": "ok", "key": "ci"})
    trace = TraceRecord(
        request_id=new_request_id(),
        started_at=100.0,
        method="POST",
        path="/x",
        status=200,
        duration_ms=3.0,
        trace_id="a" * 32,
        spans=[span],
        logs=[LogLine(100.001, "stdout", "hi")],
    )
    data = trace_to_json(trace)
    assert data["spans"] == [span.to_json()] and Span.from_json(data["spans"][0]) == span
    assert data["logs"] == [{"timestamp": 100.001, "stream": "stdout", "text": "hi"}]


def test_errors_read_well():
    assert isinstance(TracePrefixTooShort("x"), ValueError)
    exc = AmbiguousPrefix("abcdef", [(f"abcdef{i}", 1.0, "GET", "/", 200) for i in range(7)])
    assert "matches 7 traces" in str(exc) and "2 more" in str(exc)


def test_invocation_spans_place_runtime_and_function_back_from_the_end():
    result = InvocationResult(
        200, (), b"", worker_pid=7, cold_start=True, queued_ms=1.0, startup_ms=9.0, run_ms=20.0
    )
    runtime, function = invocation_spans(end=100.0, result=result, function="f")
    assert runtime.start == pytest.approx(100.0 - 0.030) and runtime.duration_ms == 10.0
    assert runtime.attributes == {"worker_pid": 7, "start": "cold", "waited_ms": 1.0}
    assert function.start == pytest.approx(100.0 - 0.020) and function.duration_ms == 20.0
    failure = FunctionFailed(504, "timeout", "ran past 30 s", worker_pid=9)
    (failed,) = invocation_spans(end=100.0, failure=failure, started=99.0)
    assert failed.duration_ms == pytest.approx(1000.0) and failed.attributes["status"] == 504


def test_queue_events_become_state_spans_and_logs():
    job = queued_job("f", attempts=2)
    state, spans, logs = queue_event_trace(QueueEvent("running", job, 50.0, wait_ms=500.0))
    assert state == "running" and spans == [
        Span("queue", 49.5, 500.0, {"attempt": 2, "max_attempts": 3})
    ]
    failure = FunctionFailed(502, "runtime_crashed", "boom", logs=(LogLine(49.9, "stderr", "x"),))
    retry = QueueEvent(
        "retry",
        job,
        50.0,
        status=502,
        error="e",
        retry_in_s=1.23456,
        duration_ms=100.0,
        failure=failure,
    )
    state, spans, logs = queue_event_trace(retry)
    assert state == "queued" and [s.name for s in spans] == ["queue", "function"]
    assert spans[0].attributes["retry_in_s"] == 1.235 and spans[1].start == pytest.approx(49.9)
    assert [line.text for line in logs] == ["x"]
    result = InvocationResult(200, (), b"", run_ms=5.0)
    ok = QueueEvent("succeeded", job, 50.0, status=200, duration_ms=5.0, result=result)
    state, spans, logs = queue_event_trace(ok)
    assert state == "succeeded" and [s.name for s in spans] == ["runtime", "function"]
