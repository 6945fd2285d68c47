"""Durable queue for async invocations (docs/reference.md#async-functions).

An async function's request is written to SQLite and committed (``synchronous=FULL``: on disk,
not just in the OS cache) before the gateway answers ``202``. A dispatcher task claims due jobs,
runs them through the same runtime pool as synchronous requests, and stores the result.

Delivery guarantee: **at least once**. A job is marked ``running`` before it is invoked and
``succeeded`` after; if the gateway stops or crashes in between, the job goes back to
``queued`` when the dispatcher next starts and runs again. A function may therefore see the
same request id twice and should be idempotent on it. A job is never lost once ``enqueue``
returned. An attempt interrupted by a gateway stop does not count against ``max_attempts``.

Failures a retry may cure (502, 504) are retried with exponential backoff and jitter, up to
``max_attempts`` in all; then the job is kept as ``failed`` with the last error. A function
that was removed by a redeploy fails at once (:class:`UnknownFunction`).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .errors import StateError
from .jobs import Job, QueueEvent, attempt_event, invocation_json, job_from_row
from .jobstate import (
    RETRY_STATUSES,
    Backoff,
    Failed,
    Interrupted,
    Started,
    Succeeded,
    advance,
)
from .runtime.api import FunctionFailed, Invocation, InvocationResult
from .tracestore import prepare_db_file

log = logging.getLogger(__name__)

Invoke = Callable[[str, Invocation], Awaitable[InvocationResult]]
OnEvent = Callable[[QueueEvent], None]

POLL_INTERVAL = 0.5  # how often due retries are looked for when nothing else wakes us
REQUEUE_TIMEOUT = 2.0  # shielded write on cancellation: put in-flight jobs back
PRUNE_EVERY = 60.0  # seconds between deletions of old finished jobs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    request_id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    invocation TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    state TEXT NOT NULL,
    next_run_at REAL NOT NULL,
    result_status INTEGER,
    result_headers TEXT,
    result_body BLOB,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_run_at);
"""


class QueueUnavailable(Exception):
    """The job could not be stored (the disk failed, the file is locked...)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"could not queue {request_id}")
        self.request_id = request_id


class UnknownFunction(Exception):
    """Raised by the dispatcher's ``invoke`` when the job's function is no longer deployed;
    the job fails at once, without retries."""

    def __init__(self, function: str) -> None:
        super().__init__(f"function {function!r} is no longer deployed")
        self.function = function


def _connect(db_path: Path) -> sqlite3.Connection:
    prepare_db_file(db_path)
    conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is on disk when it returns, so a 202 survives a power cut.
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(_SCHEMA)
    return conn


class JobQueue:
    """Async invocations in a SQLite file, and the dispatcher that runs them."""

    def __init__(
        self,
        db_path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        poll_interval: float = POLL_INTERVAL,
        rng: random.Random | None = None,
        keep_finished_s: float = 7 * 86400,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.db_path = Path(db_path)
        self._clock = clock
        self.max_attempts = max_attempts
        self.backoff_policy = Backoff(backoff_base, backoff_max)
        self.poll_interval = poll_interval
        self.keep_finished_s = keep_finished_s  # results stay readable this long, like traces
        self._rng = rng or random.Random()
        # One writer connection shared by worker threads; the lock serialises them.
        self._lock = threading.Lock()
        try:
            self._conn = _connect(self.db_path)  # start-up, not the request path
        except (OSError, sqlite3.Error) as exc:
            raise StateError(str(self.db_path), f"cannot open the queue: {exc}") from exc
        (self._depth,) = self._conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')"
        ).fetchone()
        self._wake = anyio.Event()

    # -- producer (request path) ----------------------------------------------------------

    async def enqueue(self, invocation: Invocation, function: str) -> None:
        """Store the invocation as a queued job; committed to disk when this returns.

        Raises :class:`QueueUnavailable` when it cannot be stored: the caller must not get a
        202 (the gateway answers 503).
        """
        now = self._clock()
        row = (
            invocation.request_id,
            function,
            invocation_json(invocation),
            invocation.body,
            self.max_attempts,
            now,
            now,
            now,
        )
        try:
            await anyio.to_thread.run_sync(self._insert, row)
        except sqlite3.Error as exc:
            log.exception("queue: could not store %s", invocation.request_id)
            raise QueueUnavailable(invocation.request_id) from exc
        self._depth += 1
        self._wake.set()

    def _insert(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO jobs (request_id, function, invocation, body, attempts, "
                "max_attempts, state, next_run_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 0, ?, 'queued', ?, ?, ?)",
                row,
            )

    def depth(self) -> int:
        """Jobs queued or running (kept in memory: cheap enough for every metrics scrape)."""
        return self._depth

    # -- readers --------------------------------------------------------------------------

    def get(self, request_id: str) -> Job | None:
        """The job for that request id, or None; opens its own connection (sync)."""
        if not self.db_path.exists():
            return None
        conn = sqlite3.connect(self.db_path)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            row = conn.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        finally:
            conn.close()
        return job_from_row(row) if row is not None else None

    def recent(self, limit: int) -> list[Job]:
        """The ``limit`` newest jobs, newest first (the dashboard's jobs page); sync."""
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(self.db_path)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            rows = conn.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        finally:
            conn.close()
        return [job_from_row(row) for row in rows]

    async def fetch(self, request_id: str) -> Job | None:
        """:meth:`get` off the event loop (``GET /_flux/invocations/ID``); the Redis store's
        queue has the same method, so the endpoint does not care which store it runs on."""
        return await anyio.to_thread.run_sync(self.get, request_id)

    async def fetch_recent(self, limit: int) -> list[Job]:
        """:meth:`recent` off the event loop (the dashboard's jobs page)."""
        return await anyio.to_thread.run_sync(self.recent, limit)

    # -- dispatcher -----------------------------------------------------------------------

    async def run_dispatcher(
        self,
        invoke: Invoke,
        *,
        concurrency: int = 4,
        on_event: OnEvent | None = None,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run due jobs, at most ``concurrency`` at a time, until cancelled.

        ``invoke(function, invocation)`` runs one attempt; the invocation's ``deadline`` is the
        one stored at enqueue time, so ``invoke`` must set a fresh one; it raises
        :class:`UnknownFunction` for a function no longer deployed (no retries), or
        ``FunctionFailed`` (retried).

        ``on_event(event)`` is told of each :class:`~fluxgw.jobs.QueueEvent` (``running``,
        ``succeeded``, ``retry``, ``failed``) after its change is committed. Passing them on to
        ``TraceStore.record_queue_event`` fills the request's trace.
        """
        requeued = await anyio.to_thread.run_sync(self._recover)
        if requeued:
            log.warning("queue: %d job(s) interrupted by a stop were queued again", requeued)
        emit = _safe(on_event)
        active = 0
        next_prune = anyio.current_time()

        async def run_one(job: Job, waited: float) -> None:
            nonlocal active
            try:
                await self._attempt(job, waited, invoke, emit)
            except sqlite3.Error:
                # The job stays "running" on disk and is re-queued at the next start.
                log.exception("queue: could not record the outcome of %s", job.request_id)
            finally:
                active -= 1
                self._wake.set()  # a slot is free

        async with anyio.create_task_group() as tasks:
            task_status.started()
            while True:
                # Reset before claiming: an enqueue during the claim sets the new event.
                self._wake = anyio.Event()
                if active < concurrency:
                    try:
                        claimed = await anyio.to_thread.run_sync(
                            self._claim, concurrency - active, self._clock()
                        )
                    except sqlite3.Error:
                        log.exception("queue: could not claim jobs; trying again")
                        claimed = []
                    for job, waited in claimed:
                        active += 1
                        tasks.start_soon(run_one, job, waited)
                if anyio.current_time() >= next_prune:
                    next_prune = anyio.current_time() + PRUNE_EVERY
                    try:
                        await anyio.to_thread.run_sync(self.prune, self._clock())
                    except sqlite3.Error:
                        log.exception("queue: could not prune finished jobs")
                with anyio.move_on_after(self.poll_interval):
                    await self._wake.wait()

    async def _attempt(self, job: Job, waited: float, invoke: Invoke, emit: OnEvent) -> None:
        emit(QueueEvent("running", job, job.updated_at, wait_ms=waited * 1000))
        started = self._clock()
        try:
            try:
                result = await invoke(job.function, job.invocation)
            except UnknownFunction as exc:
                await self._finish(job, Failed(str(exc), retryable=False), started, emit, exc)
            except FunctionFailed as exc:
                # e.g. 413: the same input fails the same way, retrying cures nothing
                failed = Failed(f"{exc.code}: {exc.message}", exc.status in RETRY_STATUSES)
                await self._finish(job, failed, started, emit, exc, status=exc.status)
            except Exception as exc:
                # A bug on our side must not stop the dispatcher; the job may still succeed.
                log.exception("queue: invoking %s for %s failed", job.function, job.request_id)
                failed = Failed(f"internal error: {exc!r}", retryable=True)
                await self._finish(job, failed, started, emit, exc)
            else:
                succeeded = Succeeded(result.status, result.headers, result.body)
                await self._finish(job, succeeded, started, emit, result=result)
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(REQUEUE_TIMEOUT) as scope:
                scope.shield = True
                interrupted = advance(job, Interrupted(), self._clock())
                await anyio.to_thread.run_sync(self._save, interrupted)
            raise

    async def _finish(
        self,
        job: Job,
        outcome: Succeeded | Failed,
        started: float,
        emit: OnEvent,
        failure: BaseException | None = None,
        *,
        status: int | None = None,
        result: InvocationResult | None = None,
    ) -> None:
        """Store the attempt's outcome, then tell ``emit`` (after the commit)."""
        now = self._clock()
        draw = self._rng.random()
        done = advance(job, outcome, now, backoff=self.backoff_policy, draw=draw)
        await anyio.to_thread.run_sync(self._save, done)
        if done.state != "queued":
            self._depth -= 1
        emit(attempt_event(done, now, started, status, result, failure))

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure (jitter included)."""
        return self.backoff_policy.delay(attempts, self._rng.random())

    # -- sqlite, in worker threads --------------------------------------------------------

    def prune(self, now: float) -> int:
        """Delete succeeded and failed jobs finished more than ``keep_finished_s`` ago, so the
        file does not grow without end; returns how many."""
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM jobs WHERE state IN ('succeeded', 'failed') AND updated_at < ?",
                (now - self.keep_finished_s,),
            )
            return cursor.rowcount

    def _recover(self) -> int:
        """Jobs left ``running`` by a stopped gateway go back to ``queued`` (at least once);
        the interrupted attempt is not counted."""
        now = self._clock()
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), "
                "next_run_at = ?, updated_at = ? WHERE state = 'running'",
                (now, now),
            )
            return cursor.rowcount

    def _claim(self, limit: int, now: float) -> list[tuple[Job, float]]:
        """Atomically mark up to ``limit`` due jobs ``running`` (attempts + 1); each job is
        returned with the seconds it waited since it was (re)queued."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE state = 'queued' AND next_run_at <= ? "
                "ORDER BY next_run_at, created_at LIMIT ?",
                (now, limit),
            ).fetchall()
            jobs = [job_from_row(row) for row in rows]
            claimed = [
                (advance(job, Started(), now), max(0.0, now - job.updated_at)) for job in jobs
            ]
            self._conn.executemany(_SAVE, [_save_params(job) for job, _ in claimed])
        return claimed

    def _save(self, job: Job) -> None:
        """Write the job's state as :func:`~fluxgw.jobstate.advance` returned it."""
        with self._lock:
            self._conn.execute(_SAVE, _save_params(job))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_SAVE = (
    "UPDATE jobs SET state = ?, attempts = ?, next_run_at = ?, result_status = ?, "
    "result_headers = ?, result_body = ?, error = ?, updated_at = ? WHERE request_id = ?"
)


def _save_params(job: Job) -> tuple[Any, ...]:
    headers = json.dumps(job.result_headers) if job.result_headers is not None else None
    return (
        job.state,
        job.attempts,
        job.next_run_at,
        job.result_status,
        headers,
        job.result_body,
        job.error,
        job.updated_at,
        job.request_id,
    )


def _safe(on_event: OnEvent | None) -> OnEvent:
    """``on_event`` guarded: a failing listener (tracing) must not stop the dispatcher."""

    def emit(event: QueueEvent) -> None:
        if on_event is None:
            return
        try:
            on_event(event)
        except Exception:
            log.exception("queue: on_event(%r) failed for %s", event.kind, event.job.request_id)

    return emit
