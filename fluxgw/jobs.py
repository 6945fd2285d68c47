"""An async invocation as stored (:class:`Job`), its SQLite row form, and the JSON view
``GET /_flux/invocations/ID`` answers with. Pure conversions: fluxgw.queue does the I/O."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any, Literal

import attrs

from .runtime.api import Invocation, InvocationResult

JobState = Literal["queued", "running", "succeeded", "failed"]
EventKind = Literal["running", "succeeded", "retry", "failed"]


@attrs.frozen
class Job:
    """One async invocation and where it stands."""

    request_id: str
    function: str
    invocation: Invocation
    attempts: int
    max_attempts: int
    state: JobState
    next_run_at: float
    result_status: int | None
    result_headers: tuple[tuple[str, str], ...] | None
    result_body: bytes | None
    error: str | None
    created_at: float
    updated_at: float


@attrs.frozen
class QueueEvent:
    """What the dispatcher tells its listener (traces, the live feed) after each committed
    change of a job: it started an attempt (``running``), or the attempt ended."""

    kind: EventKind
    job: Job  # as stored after the change
    at: float  # epoch seconds
    wait_ms: float = 0.0  # running: how long it waited since it was (re)queued
    duration_ms: float = 0.0  # the attempt's, for the other kinds
    status: int | None = None  # the function's (or the failure's) HTTP status
    error: str | None = None
    retry_in_s: float | None = None  # retry: seconds until the next attempt
    result: InvocationResult | None = None  # succeeded
    failure: BaseException | None = None  # retry, failed

    @property
    def attempt(self) -> int:
        return self.job.attempts

    @property
    def max_attempts(self) -> int:
        return self.job.max_attempts

    @property
    def function(self) -> str:
        return self.job.function


def attempt_event(
    done: Job,
    now: float,
    started: float,
    status: int | None = None,
    result: InvocationResult | None = None,
    failure: BaseException | None = None,
) -> QueueEvent:
    """The event for an attempt that ended (both queues): ``done`` is the job as
    :func:`~fluxgw.jobstate.advance` left it, so a job queued again is a ``retry``."""
    kind: EventKind = "retry" if done.state == "queued" else done.state
    return QueueEvent(
        kind,
        done,
        now,
        duration_ms=(now - started) * 1000,
        status=result.status if result is not None else status,
        error=done.error,
        retry_in_s=done.next_run_at - now if kind == "retry" else None,
        result=result,
        failure=failure,
    )


def invocation_json(invocation: Invocation) -> str:
    fields = attrs.asdict(invocation, recurse=False)
    del fields["body"]  # stored as a BLOB column, not base64 in JSON
    return json.dumps(fields, separators=(",", ":"))


def _tuples(value: Any) -> Any:
    # JSON turns the header and query pairs into lists; Invocation holds tuples.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def job_from_row(row: sqlite3.Row) -> Job:
    known = {f.name for f in attrs.fields(Invocation)}
    fields = {k: _tuples(v) for k, v in json.loads(row["invocation"]).items() if k in known}
    headers = row["result_headers"]
    return Job(
        request_id=row["request_id"],
        function=row["function"],
        invocation=Invocation(**fields, body=bytes(row["body"])),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        state=row["state"],
        next_run_at=row["next_run_at"],
        result_status=row["result_status"],
        result_headers=_tuples(json.loads(headers)) if headers is not None else None,
        result_body=bytes(row["result_body"]) if row["result_body"] is not None else None,
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def job_to_json(job: Job) -> dict[str, Any]:
    """The job as ``GET /_flux/invocations/ID`` shows it; times are epoch seconds."""
    result = None
    if job.result_status is not None:
        result = {"status": job.result_status, "headers": {}, "body": None}
        headers = job.result_headers or ()
        merged: dict[str, str] = {}
        for name, value in headers:
            # Repeated fields are combined the HTTP way (RFC 9110 §5.3).
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        result["headers"] = merged
        result.update(_body_json(job.result_body or b"", merged.get("content-type", "")))
    out: dict[str, Any] = {
        "request_id": job.request_id,
        "function": job.function,
        "status": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "result": result,
        "error": job.error,
    }
    if job.state == "queued" and job.attempts > 0:
        out["next_attempt_at"] = job.next_run_at
    return out


def _body_json(body: bytes, content_type: str) -> dict[str, Any]:
    """The body as JSON when it is JSON, as text when it is UTF-8, else base64."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return {"body": json.loads(body)}
        except (ValueError, UnicodeDecodeError):
            pass  # mislabelled: fall back to text or base64 below
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "body_encoding": "base64"}
