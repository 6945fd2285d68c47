"""The trace store: traces buffered in memory, written to SQLite by one background task.

The request path only calls :meth:`TraceStore.record`, a deque append: it never waits for
disk. :meth:`TraceStore.run` wakes every ``flush_interval`` (100 ms) and writes what piled up
in one transaction, in a worker thread, so a trace is readable by ``flux trace`` well within
the one second docs/reference.md#request-ids-and-traces promises. If the disk cannot keep up the
buffer is bounded: the oldest pending
traces are dropped and counted (``flux_traces_dropped_total``) rather than growing without end.

Layout: one ``traces`` row per request (spans and logs as JSON columns), plus a
``trace_events`` table for what the queue adds later to an async request (spans, log lines,
state). Appending events, instead of rewriting the trace row, means the order in which the
gateway's record and the dispatcher's events reach the writer does not matter.

Readers (the CLI) open their own connection; WAL mode lets them read while a gateway writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson

from . import tracesize
from .errors import StateError
from .tracebuffer import PendingTraces
from .tracing import (
    AmbiguousPrefix,
    Span,
    TraceNotFound,
    TracePrefixTooShort,
    TraceRecord,
    log_from_json,
    log_to_json,
)

log = logging.getLogger(__name__)

MIN_PREFIX = 6
DEFAULT_MAX_BYTES = tracesize.DEFAULT_MAX_BYTES  # traces.db on disk, docs/limits.md
MAX_PENDING = 50_000  # ~ a few seconds of a very busy gateway; past it the oldest are dropped
RETENTION_EVERY = 50  # flushes between retention passes (~5 s at 100 ms)
ORPHAN_GRACE_S = 300.0  # events may reach the disk before their trace row; keep them a while
SHUTDOWN_FLUSH_TIMEOUT = 5.0
MAX_CANDIDATES = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    request_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    function TEXT,
    key_name TEXT,
    client_request_id TEXT,
    traceparent_in TEXT,
    trace_id TEXT NOT NULL,
    async_state TEXT,
    spans TEXT NOT NULL,
    logs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_started_at ON traces (started_at);
CREATE TABLE IF NOT EXISTS trace_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    at REAL NOT NULL,
    async_state TEXT,
    spans TEXT NOT NULL,
    logs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trace_events_request_id ON trace_events (request_id, id);
"""


def _unpack(count: int) -> str:
    """``json_extract(value, '$[0]'), ...``: the columns of one row of a json_each batch."""
    return ", ".join(f"json_extract(value, '$[{i}]')" for i in range(count))


# Trace rows go in as multi-row ``INSERT ... VALUES (...), (...)`` statements of up to
# 64 rows, their values bound in C. The earlier form (one JSON document per batch,
# unpacked with json_each and 14 json_extract per row) had SQLite parse every row's JSON 14
# times: 29 us of the writer thread's CPU per row against 6-8 here, and on a 2-core machine that
# thread's CPU comes out of the gateway's throughput (BENCHMARKS.md, "Both event loops").
TRACE_COLUMNS = (
    "request_id, started_at, method, path, status, duration_ms, function, key_name, "
    "client_request_id, traceparent_in, trace_id, async_state, spans, logs"
)
TRACE_FIELDS = TRACE_COLUMNS.count(",") + 1  # 14 values a row
# Rows per statement. A batch is cut into these sizes only, so at most four INSERT statements
# are ever compiled: every distinct SQL text is a prepared statement that sqlite3 caches (up
# to 128 per connection), and one for each remainder 1..63 held several MiB more, which
# showed in a 20-minute soak as steps in the gateway's RSS. 64 rows are 896 bound values,
# under SQLite's oldest limit (999).
TRACE_CHUNKS = (64, 16, 4, 1)


@functools.cache
def _insert_traces(rows: int) -> str:
    values = ", ".join(["(" + ", ".join("?" * TRACE_FIELDS) + ")"] * rows)
    return f"INSERT OR REPLACE INTO traces ({TRACE_COLUMNS}) VALUES {values}"


# Events are rare (async jobs): one JSON document per batch, unpacked by json_each.
_INSERT_EVENTS = (
    "INSERT INTO trace_events (request_id, at, async_state, spans, logs) "
    f"SELECT {_unpack(5)} FROM json_each(?)"
)

# What readers select from "traces t": the latest state an event set wins over the state
# recorded with the trace row.
_SELECT = (
    "t.request_id, t.started_at, t.method, t.path, t.status, t.duration_ms, t.function, "
    "t.key_name, t.client_request_id, t.traceparent_in, t.trace_id, "
    "COALESCE((SELECT e.async_state FROM trace_events e WHERE e.request_id = t.request_id "
    "AND e.async_state IS NOT NULL ORDER BY e.id DESC LIMIT 1), t.async_state)"
)


# What waits in the buffer: (kind, row) with the row ready for its INSERT. A trace row is one
# request; an event row is what an async invocation adds to it later (spans, logs, state).
_TRACE, _EVENT = "trace", "event"
_Pending = tuple[str, tuple[Any, ...]]


def prepare_db_file(db_path: Path) -> None:
    """Create the database file (and its folder) with mode 0600 if missing; tighten it if not.

    Created here rather than by SQLite so it is private from the first byte; SQLite gives its
    -wal and -shm files the database file's permissions.
    """
    if not db_path.exists():
        db_path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(db_path, 0o600)


def connect(db_path: Path, *, create: bool) -> sqlite3.Connection | None:
    """A connection in WAL mode with a busy timeout, the schema in place.

    ``create=False`` (readers) returns None when there is no database yet, instead of
    creating an empty one as a side effect of ``flux trace``.
    """
    if create:
        prepare_db_file(db_path)
    elif not db_path.exists():
        return None
    conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    if create:
        tracesize.prepare(conn)  # first: incremental auto-vacuum must precede WAL and tables
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # traces are diagnostics: no fsync per batch
        conn.execute("PRAGMA temp_store = MEMORY")  # json_each batches: no temp file per write
        conn.executescript(_SCHEMA)
    return conn


def _dumps(value: Any) -> str:
    # orjson: ~10x faster than json.dumps, and this runs once per request.
    return orjson.dumps(value, default=str).decode()


class TraceStore(PendingTraces[_Pending]):
    """Traces of recent requests, file-backed, written off the event loop."""

    def __init__(
        self,
        db_path: Path,
        *,
        max_traces: int = 10_000,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = 7 * 86400,
        flush_interval: float = 0.1,
        batch_size: int = 500,
        enabled: bool = True,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db_path = Path(db_path)
        self.max_traces = max_traces
        self.max_bytes = max_bytes
        self._write_error: str | None = None  # the last one logged: a full disk logs once
        self.max_age_s = max_age_s
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        super().__init__(enabled=enabled, max_pending=max_pending, clock=clock)
        self._conn: sqlite3.Connection | None = None
        self._flushes = 0

    # -- request path ---------------------------------------------------------------------

    def record(self, trace: TraceRecord) -> None:
        """Queue one finished request's trace for writing; O(1), never blocks."""
        if self.enabled:
            self._push((_TRACE, _trace_row(trace)))

    def _event_item(
        self, request_id: str, at: float, state: str | None, spans: list[Any], logs: list[Any]
    ) -> _Pending:
        return (_EVENT, (request_id, at, state, spans, logs))

    # -- background writer ----------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write buffered traces every ``flush_interval`` until cancelled, then flush the rest.

        The final flush runs shielded, with a timeout, so a stopping gateway keeps the traces
        of its last requests without hanging on a stuck disk.
        """
        if not self.enabled:
            task_status.started()
            await anyio.sleep_forever()
        try:
            self._conn = await anyio.to_thread.run_sync(
                functools.partial(connect, self.db_path, create=True)
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(str(self.db_path), f"cannot open the trace store: {exc}") from exc
        try:
            task_status.started()
            while True:
                await anyio.sleep(self.flush_interval)
                await self.flush()
                self._flushes += 1
                if self._flushes % RETENTION_EVERY == 0:
                    try:
                        await anyio.to_thread.run_sync(self.apply_retention, self._clock())
                    except sqlite3.Error as exc:  # e.g. a reader holds a lock: next round
                        log.warning("trace retention skipped: %s", exc)
        finally:
            with anyio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT) as scope:
                scope.shield = True
                await self.flush()
                conn, self._conn = self._conn, None
                if conn is not None:
                    await anyio.to_thread.run_sync(conn.close)

    async def flush(self) -> None:
        """Write what is pending now, ``batch_size`` items per transaction (in a thread).

        Only what was pending when called: under load, items keep arriving while a batch is
        written, and chasing them turned the writer into a busy loop of tiny transactions
        (~70 a second instead of 10), which cost ~15% of the gateway's throughput.
        """
        left = len(self._pending)
        while left > 0 and self._pending and self._conn is not None:
            count = min(left, len(self._pending), self.batch_size)
            left -= count
            batch = [self._pending.popleft() for _ in range(count)]
            self._writing = count
            try:
                # Trace rows become one flat list of values (spans and logs as JSON text);
                # events one JSON document that SQLite unpacks with json_each. Either way the
                # thread holds the GIL only while a statement binds its values in C, never
                # for Python work per row: that made it fight the event loop for the GIL
                # (-10% req/s).
                traces = _trace_values(row for kind, row in batch if kind is _TRACE)
                events = _dumps([row for kind, row in batch if kind is _EVENT])
                # Not abandoned on cancel: a batch taken from the buffer is always finished.
                await anyio.to_thread.run_sync(self._write, traces, events)
            except Exception as exc:
                # Disk full, a locked file, an odd attribute: lose this batch, not the gateway;
                # say so once per kind of failure, not 10 times a second.
                if str(exc) != self._write_error:
                    self._write_error = str(exc)
                    log.error("trace writer: traces are dropped until this clears: %s", exc)
                self._dropped += count
            else:
                if self._write_error is not None:
                    self._write_error = None
                    log.warning("trace writer: writing traces again")
            finally:
                self._writing = 0

    def _write(self, traces: list[Any], events: str) -> None:
        conn = self._conn
        assert conn is not None
        with conn:  # one transaction; rolled back if any row fails
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no BUSY on upgrade
            first, end = 0, len(traces)
            for rows in TRACE_CHUNKS:
                step = rows * TRACE_FIELDS
                while end - first >= step:
                    conn.execute(_insert_traces(rows), traces[first : first + step])
                    first += step
            conn.execute(_INSERT_EVENTS, (events,))

    def apply_retention(self, now: float) -> None:
        """Delete traces past ``max_age_s``, beyond the newest ``max_traces`` and beyond
        ``max_bytes`` on disk, and give the space back (tracesize.py)."""
        conn = self._conn
        if conn is None:
            return
        self._retain_by_count_and_age(conn, now)
        tracesize.enforce(conn, self.max_bytes)

    def _retain_by_count_and_age(self, conn: sqlite3.Connection, now: float) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no BUSY on upgrade
            cutoff = now - self.max_age_s
            row = conn.execute(
                "SELECT started_at FROM traces ORDER BY started_at DESC LIMIT 1 OFFSET ?",
                (self.max_traces - 1,),
            ).fetchone()
            if row is not None:
                # Keep the newest max_traces: delete everything strictly older than the last
                # kept one (ties at that instant are kept; bounded by timestamp resolution).
                cutoff = max(cutoff, row[0])
            conn.execute("DELETE FROM traces WHERE started_at < ?", (cutoff,))
            conn.execute(
                "DELETE FROM trace_events WHERE at < ? AND request_id NOT IN "
                "(SELECT request_id FROM traces)",
                (now - ORPHAN_GRACE_S,),
            )

    # -- readers: async for the dashboard (the Redis store's trace writer has the same) ---

    async def read(self, id_or_prefix: str) -> TraceRecord:
        return await anyio.to_thread.run_sync(self.get, id_or_prefix)

    async def read_last(self, n: int) -> list[TraceRecord]:
        return await anyio.to_thread.run_sync(self.last, n)

    # -- readers (CLI): sync, their own connection ----------------------------------------

    def get(self, id_or_prefix: str) -> TraceRecord:
        """The trace with that id, or the only one starting with that prefix (≥ 6 chars)."""
        prefix = id_or_prefix.strip().lower()
        if len(prefix) < MIN_PREFIX:
            raise TracePrefixTooShort(
                f"trace id prefix {id_or_prefix!r} is too short: give at least "
                f"{MIN_PREFIX} characters"
            )
        with _reader(self.db_path) as conn:
            if conn is None:
                raise TraceNotFound(f"no trace {id_or_prefix!r} (no traces recorded yet)")
            # A range scan on the primary key: ids are hex, so "~" sorts after any of them.
            rows = conn.execute(
                f"SELECT {_SELECT}, t.spans, t.logs "
                "FROM traces t WHERE request_id >= ? AND request_id < ? "
                "ORDER BY started_at DESC LIMIT ?",
                (prefix, prefix + "~", MAX_CANDIDATES + 1),
            ).fetchall()
            if not rows:
                raise TraceNotFound(
                    f"no trace {id_or_prefix!r}: it may be older than the retention, "
                    "or the id is mistyped"
                )
            if len(rows) > 1:
                exact = [row for row in rows if row[0] == prefix]
                if not exact:
                    raise AmbiguousPrefix(
                        prefix, [tuple(row[i] for i in (0, 1, 2, 3, 4)) for row in rows]
                    )
                rows = exact
            trace = _trace_from_row(rows[0])
            for spans, logs in conn.execute(
                "SELECT spans, logs FROM trace_events WHERE request_id = ? ORDER BY id",
                (trace.request_id,),
            ):
                trace.spans.extend(Span.from_json(s) for s in json.loads(spans))
                trace.logs.extend(log_from_json(line) for line in json.loads(logs))
            return trace

    def last(self, n: int) -> list[TraceRecord]:
        """The ``n`` newest traces, newest first; without spans or log lines (for listing)."""
        with _reader(self.db_path) as conn:
            if conn is None or n <= 0:
                return []
            rows = conn.execute(
                f"SELECT {_SELECT} FROM traces t ORDER BY started_at DESC LIMIT ?",
                (n,),
            ).fetchall()
        return [_trace_from_row(row) for row in rows]


@contextlib.contextmanager
def _reader(db_path: Path) -> Iterator[sqlite3.Connection | None]:
    """A short-lived reader connection, or None when there is no database yet."""
    conn = connect(db_path, create=False)
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()


def _trace_row(trace: TraceRecord) -> tuple[Any, ...]:
    return (
        trace.request_id,
        trace.started_at,
        trace.method,
        trace.path,
        trace.status,
        trace.duration_ms,
        trace.function,
        trace.key_name,
        trace.client_request_id,
        trace.traceparent_in,
        trace.trace_id,
        trace.async_state,
        [s.to_json() for s in trace.spans],
        [log_to_json(line) for line in trace.logs],
    )


def _trace_values(rows: Iterator[tuple[Any, ...]]) -> list[Any]:
    """The rows' values in one flat list, in TRACE_COLUMNS order, spans and logs as JSON."""
    values: list[Any] = []
    for row in rows:
        values.extend(row[:12])
        values.append(_dumps(row[12]))
        values.append(_dumps(row[13]))
    return values


def _trace_from_row(row: Sequence[Any]) -> TraceRecord:
    spans = [Span.from_json(s) for s in json.loads(row[12])] if len(row) > 12 else []
    logs = [log_from_json(line) for line in json.loads(row[13])] if len(row) > 13 else []
    return TraceRecord(
        request_id=row[0],
        started_at=row[1],
        method=row[2],
        path=row[3],
        status=row[4],
        duration_ms=row[5],
        function=row[6],
        key_name=row[7],
        client_request_id=row[8],
        traceparent_in=row[9],
        trace_id=row[10],
        async_state=row[11],
        spans=spans,
        logs=logs,
    )
