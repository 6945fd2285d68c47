"""`flux logs`: recent requests and their output, from the trace store, and with ``--follow``
the new ones as they are recorded.

It only reads `.flux/traces.db` (SQLite in WAL mode, so it never gets in the running gateway's
way): each poll is one short autocommit read of the rows past the last one it showed, by rowid
(the order rows were written). The gateway writes traces every 100 ms and this polls every
200 ms, so a request shows up well within a second. Traces hold no key or secret (the key's
name only), so neither can this. See docs/logs.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs

from .errors import FluxError
from .feed import FeedItem, JobEvent, RequestEvent
from .logline import Style, event_from_trace, render_all, use_color
from .runtime.api import LogLine
from .state import StateDir
from .tracestore import connect
from .tracing import Span, TraceRecord, log_from_json

POLL_INTERVAL = 0.2  # s between reads with --follow
DEFAULT_LINES = 20

_STATUS = re.compile(r"([1-5])(?:xx|XX)|([1-5][0-9][0-9])")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_REQUEST_COLUMNS = (
    "t.rowid, t.request_id, t.started_at, t.method, t.path, t.status, t.duration_ms, "
    "t.function, t.key_name, t.trace_id, t.async_state, t.spans, t.logs"
)
_EVENT_COLUMNS = "e.id, e.request_id, e.at, e.async_state, e.spans, e.logs, t.function, t.status"


# -- arguments ------------------------------------------------------------------------------


def status_filter(text: str) -> tuple[int, int]:
    """``5xx`` -> (500, 599), ``429`` -> (429, 429); an argparse type."""
    match = _STATUS.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a status (429) or a class (5xx)")
    if match.group(1):
        low = int(match.group(1)) * 100
        return low, low + 99
    code = int(match.group(2))
    return code, code


def duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` -> seconds; an argparse type."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration like 30s, 10m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new requests as they come"
    )
    parser.add_argument(
        "--function",
        action="append",
        default=[],
        dest="functions",
        metavar="F",
        help="only requests of this function (repeatable)",
    )
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        dest="statuses",
        type=status_filter,
        metavar="S",
        help="only these statuses: 429, 5xx, 4xx... (repeatable)",
    )
    parser.add_argument(
        "--since", type=duration, metavar="AGE", help="only requests from the last AGE (10m, 2h)"
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=int,
        metavar="N",
        help=f"show the last N requests first (default {DEFAULT_LINES}; all with --since)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


@attrs.frozen
class Filter:
    functions: tuple[str, ...] = ()
    statuses: tuple[tuple[int, int], ...] = ()
    since: float | None = None  # epoch seconds

    def sql(self, alias: str = "t") -> tuple[str, list[Any]]:
        """WHERE conditions (joined with AND, starting with AND) and their parameters."""
        where = ""
        params: list[Any] = []
        if self.functions:
            where += f" AND {alias}.function IN ({', '.join('?' * len(self.functions))})"
            params.extend(self.functions)
        if self.statuses:
            ranges = " OR ".join(f"{alias}.status BETWEEN ? AND ?" for _ in self.statuses)
            where += f" AND ({ranges})"
            params.extend(bound for pair in self.statuses for bound in pair)
        return where, params

    def wants_status(self, status: int | None) -> bool:
        if not self.statuses:
            return True
        return status is not None and any(low <= status <= high for low, high in self.statuses)


# -- reading --------------------------------------------------------------------------------


class LogReader:
    """Reads request rows and async-job events past what it has already returned.

    Each read is one read transaction (a consistent snapshot): the highest row and event ids
    are taken in it, so a row committed meanwhile is returned by the next read, never skipped.
    """

    def __init__(self, conn: sqlite3.Connection, where: Filter) -> None:
        self.conn = conn
        self.where = where
        self.last_row = 0
        self.last_event = 0
        # request id -> (attempt, max_attempts) of its last job event: a success records no
        # queue span, so its attempt is the one its "running" event announced.
        self.attempts: dict[str, tuple[int, int]] = {}

    def recent(self, limit: int | None) -> list[FeedItem]:
        """The last ``limit`` matching requests (all since ``where.since`` when None), oldest
        first, with their job events; later calls to :meth:`new` continue from here."""
        with self._snapshot() as (top_row, top_event):
            where, params = self.where.sql()
            if self.where.since is not None:
                where += " AND t.started_at >= ?"
                params.append(self.where.since)
            sql = f"SELECT {_REQUEST_COLUMNS} FROM traces t WHERE t.rowid <= ?{where} "
            sql += "ORDER BY t.rowid DESC" + (" LIMIT ?" if limit is not None else "")
            args = [top_row, *params, *([limit] if limit is not None else [])]
            rows = list(reversed(self.conn.execute(sql, args).fetchall()))
            timeline: list[tuple[float, FeedItem]] = []
            answered: dict[str, float] = {}  # request id -> when its answer was complete
            for row in rows:
                event = _request(row)
                answered[event.request_id] = event.at + event.duration_ms / 1000
                timeline.append((answered[event.request_id], event))
            queued = [row[1] for row in rows if row[10] is not None]
            for chunk in _chunks(queued, 500):
                marks = ", ".join("?" * len(chunk))
                events = self.conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM trace_events e LEFT JOIN traces t "
                    f"USING (request_id) WHERE e.request_id IN ({marks}) AND e.id <= ? "
                    "ORDER BY e.id",
                    [*chunk, top_event],
                ).fetchall()
                # A job can start before its request's 202 has finished going out (the
                # dispatcher wakes on the enqueue): its lines still follow the request's.
                timeline.extend(
                    (max(job.at, answered.get(job.request_id, job.at)), job)
                    for job in self._jobs(events)
                )
        self.last_row, self.last_event = top_row, top_event
        timeline.sort(key=lambda pair: pair[0])
        return [item for _, item in timeline]

    def new(self) -> list[FeedItem]:
        """Requests and job events recorded since the last call, in the order written."""
        with self._snapshot() as (top_row, top_event):
            where, params = self.where.sql()
            rows = self.conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM traces t "
                f"WHERE t.rowid > ? AND t.rowid <= ?{where} ORDER BY t.rowid",
                [self.last_row, top_row, *params],
            ).fetchall()
            # Job events: by function in SQL; by status below (an attempt's own status).
            where, params = Filter(functions=self.where.functions).sql()
            events = self.conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM trace_events e LEFT JOIN traces t "
                f"USING (request_id) WHERE e.id > ? AND e.id <= ?{where} ORDER BY e.id",
                [self.last_event, top_event, *params],
            ).fetchall()
        self.last_row, self.last_event = top_row, top_event
        return [*(_request(row) for row in rows), *self._jobs(events)]

    def _jobs(self, rows: Iterable[Sequence[Any]]) -> list[JobEvent]:
        jobs = []
        for row in rows:
            job = _job(row)
            if job is None:
                continue
            if job.max_attempts:
                self.attempts[job.request_id] = (job.attempt, job.max_attempts)
            elif job.request_id in self.attempts:
                attempt, most = self.attempts[job.request_id]
                job = attrs.evolve(job, attempt=attempt, max_attempts=most)
            if self.where.wants_status(job.status):
                jobs.append(job)
        return jobs

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[tuple[int, int]]:
        """A read transaction, with the highest trace rowid and event id in it."""
        self.conn.execute("BEGIN")
        try:
            top_row = self.conn.execute("SELECT MAX(rowid) FROM traces").fetchone()[0] or 0
            top_event = self.conn.execute("SELECT MAX(id) FROM trace_events").fetchone()[0] or 0
            # Lower than last time: the table was emptied (retention) and ids start over.
            if top_row < self.last_row:
                self.last_row = 0
            if top_event < self.last_event:
                self.last_event = 0
            yield top_row, top_event
        finally:
            self.conn.execute("COMMIT")


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _request(row: Sequence[Any]) -> RequestEvent:
    trace = TraceRecord(
        request_id=row[1],
        started_at=row[2],
        method=row[3],
        path=row[4],
        status=row[5],
        duration_ms=row[6],
        function=row[7],
        key_name=row[8],
        trace_id=row[9],
        async_state=row[10],
        spans=[Span.from_json(s) for s in json.loads(row[11])],
        logs=[log_from_json(line) for line in json.loads(row[12])],
    )
    return event_from_trace(trace)


def _job(row: Sequence[Any]) -> JobEvent | None:
    """A job event from a ``trace_events`` row (see :func:`fluxgw.tracing.queue_event_trace`
    for what each state adds)."""
    _, request_id, at, state, spans_json, logs_json, function, _status = row
    if state is None:
        return None
    spans = [Span.from_json(s) for s in json.loads(spans_json)]
    logs: list[LogLine] = [log_from_json(line) for line in json.loads(logs_json)]
    queue = next((s.attributes for s in spans if s.name == "queue"), {})
    runtime = next((s.attributes for s in spans if s.name == "runtime"), {})
    call = next((s for s in spans if s.name == "function"), None)
    event = {"queued": "retry"}.get(state, state)
    status = call.attributes.get("status") if call is not None else None
    retry = queue.get("retry_in_s")
    return JobEvent(
        at=at,
        request_id=request_id,
        function=function or (call.attributes.get("function") if call else None) or "?",
        event=event,
        attempt=int(queue.get("attempt") or 0),
        max_attempts=int(queue.get("max_attempts") or 0),
        status=status if isinstance(status, int) else None,
        duration_ms=call.duration_ms if call is not None else None,
        start=runtime.get("start"),
        error=queue.get("error") or (call.attributes.get("error") if call else None),
        retry_in_s=float(retry) if isinstance(retry, int | float) else None,
        logs=logs,
    )


# -- the command ----------------------------------------------------------------------------


def run_logs(
    state: StateDir,
    args: argparse.Namespace,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    if args.lines is not None and args.lines < 0:
        raise FluxError("--lines must be >= 0")
    where = Filter(
        functions=tuple(args.functions),
        statuses=tuple(args.statuses),
        since=None if args.since is None else clock() - args.since,
    )
    limit = args.lines if args.lines is not None else (None if args.since else DEFAULT_LINES)
    style = Style(color=not args.json and use_color(sys.stdout, os.environ))
    try:
        conn = _open(state, wait=args.follow, sleep=sleep)
        if conn is None:
            if not args.json:
                print("no requests recorded yet")
            return 0
        with contextlib.closing(conn):
            reader = LogReader(conn, where)
            _show(reader.recent(limit), style, args.json)
            while args.follow:
                sleep(POLL_INTERVAL)
                _show(reader.new(), style, args.json)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how --follow ends
    except sqlite3.Error as exc:
        raise FluxError(f"cannot read {state.traces_db}: {exc}") from None
    return 0


def _open(
    state: StateDir, *, wait: bool, sleep: Callable[[float], None]
) -> sqlite3.Connection | None:
    """A reader connection; with ``wait`` (``--follow``) it waits for the store to appear."""
    while True:
        conn = connect(state.traces_db, create=False)
        if conn is not None:
            # A gateway creates the tables with the file; wait for them rather than fail.
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'traces'").fetchone():
                return conn
            conn.close()
        if not wait:
            return None
        sleep(POLL_INTERVAL)


def _show(items: list[FeedItem], style: Style, as_json: bool) -> None:
    if items:
        sys.stdout.write(render_all(items, style, as_json=as_json))
        sys.stdout.flush()
