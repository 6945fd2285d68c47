"""Warm worker pools: one per deployed function, many concurrent invocations per worker.

:class:`PoolManager` is what the gateway holds. ``deploy()`` swaps in a new generation of
pools (old workers finish their in-flight invocations, then stop); ``open()`` runs one
invocation and yields its answer (whole, or a :class:`Stream` of chunks) under its deadline;
``invoke()`` is the same with the body collected; ``run()`` is the background task that owns
every worker's supervising task (so no process outlives it), reaps idle workers and pre-warms.

Capacity (docs/runtimes.md, "Concurrency"): a worker runs up to ``concurrency`` invocations at
once (the function's setting, capped by what the worker announces: 1 for a sync python
handler); a function has up to ``max_workers`` workers. A call that finds no free slot waits,
first come first served, at most ``QUEUE_WAIT`` of its timeout and behind at most ``max_queue``
others, while the pool starts workers; then it gets 503 ``overloaded`` (never a 504: it never
ran).

Failure mapping: 504 ``function_timeout``; 502 ``function_error`` (handler raised; the worker
stays), ``function_crashed`` (its worker died during this call), ``worker_lost`` (its worker had
to be killed because of another invocation), ``memory_limit_exceeded``,
``bad_function_response``, ``function_failed_to_start``, ``runtime_unavailable``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from ..project import FunctionSpec
from . import protocol
from .api import FunctionFailed, Invocation, InvocationResult, LogLine
from .discovery import RuntimeFinder, default_finder
from .options import PoolOptions
from .process import Call, Worker, WorkerGone, log_lines
from .sandbox import Launcher, WorkerLaunch
from .wakeup import Waiting, Wakeup

logger = logging.getLogger("fluxgw.runtime")

__all__ = ["Opened", "PoolManager", "Stream"]

DEFAULT_CONCURRENCY = {"python": 1000, "node": 1000, "deno": 1000}  # per worker; see docs
QUEUE_WAIT = 0.5  # a call waits for capacity at most this fraction of its timeout
DEFAULT_MAX_QUEUE = 1000  # calls waiting per function; more are refused at once
CANCEL_GRACE = 1.0  # seconds a worker has to let go of a cancelled invocation


def overloaded(spec: FunctionSpec, why: str) -> FunctionFailed:
    return FunctionFailed(
        503,
        "overloaded",
        f"function {spec.name} is at capacity ({why}); retry later",
        retry_after=1,
    )


@attrs.define(eq=False)
class _Waiter:
    wakeup: Wakeup
    worker: Worker | None = None
    failure: FunctionFailed | None = None


class FunctionPool:
    """The workers of one function in one deploy generation."""

    def __init__(self, spec: FunctionSpec, generation: int, max_workers: int) -> None:
        self.spec = spec
        self.generation = generation
        self.max_workers = spec.max_workers or max_workers
        self.concurrency = spec.concurrency or DEFAULT_CONCURRENCY.get(spec.runtime, 1)
        self.workers: list[Worker] = []  # ready ones, oldest first (calls pack onto them)
        self.starting = 0
        self.learned_limit: int | None = None  # what its workers announced (sync python: 1)
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.in_flight = 0
        self.draining = False

    @property
    def size(self) -> int:
        return len(self.workers) + self.starting

    def capacity(self, worker: Worker) -> int:
        limit = worker.capacity_limit
        return self.concurrency if limit is None else min(self.concurrency, limit)

    @property
    def per_worker(self) -> int:
        """Slots a worker still starting will bring: what the last ready one announced; before
        any did, 1 for python (a sync handler is the common case: growing at once beats
        waiting one cold start to learn it) and the function's concurrency for node/deno."""
        limit = self.learned_limit
        if limit is None:
            return 1 if self.spec.runtime == "python" else self.concurrency
        return min(self.concurrency, limit)

    def free_worker(self) -> Worker | None:
        for worker in self.workers:
            if worker.usable and worker.load < self.capacity(worker):
                return worker
        return None

    @property
    def idle_workers(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.load == 0]


class Stream:
    """A streamed answer: chunks as the function produces them, under the call's deadline.

    The gateway iterates :meth:`chunks`, calls :meth:`delivered` after each chunk reached the
    client (that is what lets the worker send more: a slow client slows the function), and
    reads ``outcome``, ``bytes`` and ``chunks_sent`` for the trace.
    """

    def __init__(self, call: Call, first: bytes, end_at: float, started: float) -> None:
        self._call = call
        self._first = first
        self.end_at = end_at  # anyio clock: the function's timeout bounds the whole stream
        # time.perf_counter() when the call was sent: durations, not the loop's clock
        # (uvloop's is a per-iteration reading in whole milliseconds: a first byte read 0.0)
        self.started = started
        self.outcome = "streaming"  # then: complete, error, timeout, disconnect, worker_lost...
        self.error: str | None = None
        self.bytes = 0
        self.chunks_sent = 0
        self.first_byte_ms: float | None = None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Yield the body's chunks; ends normally on ``end``; raises FunctionFailed (with
        ``outcome`` set) when the function errs, the worker is lost or the deadline passes."""
        if self._first:
            yield self._first
        while True:
            try:
                event = await self._call.next_event(self.end_at)
            except WorkerGone as lost:
                self.outcome, self.error = lost.code, lost.message
                raise FunctionFailed(502, lost.code, lost.message) from None
            if event is None:
                self.outcome = "timeout"
                raise FunctionFailed(504, "function_timeout", "the stream ran past its timeout")
            if isinstance(event, protocol.Chunk):
                yield event.data
            elif isinstance(event, protocol.End):
                self.outcome = "complete"
                return
            elif isinstance(event, protocol.HandlerError):
                self.outcome = "error"
                self.error = event.error
                raise FunctionFailed(502, "function_error", f"stream failed: {event.error}")
            # anything else: a cancelled invocation's late frames

    async def delivered(self, nbytes: int) -> None:
        """``nbytes`` reached the client: count them, give the worker that much credit."""
        if self.first_byte_ms is None:
            self.first_byte_ms = (time.perf_counter() - self.started) * 1000
        self.bytes += nbytes
        self.chunks_sent += 1
        await self._call.worker.credit(self._call, nbytes)

    def logs(self) -> tuple[LogLine, ...]:
        return self._call.logs.lines()

    def attributes(self) -> dict[str, Any]:
        """What a streamed call's trace records about its body."""
        return {
            "streamed": True,
            "stream_outcome": self.outcome,
            "bytes": self.bytes,
            "chunks": self.chunks_sent,
            "first_byte_ms": None if self.first_byte_ms is None else round(self.first_byte_ms, 3),
            **({"stream_error": self.error} if self.error else {}),
        }


@attrs.define
class Opened:
    """What :meth:`PoolManager.open` yields: the head (and whole body), or a stream."""

    result: InvocationResult  # for a stream: status and headers, body b"", logs so far
    stream: Stream | None = None


class PoolManager:
    """Per-function pools of warm workers (see the module docstring for the capacity rules).

    Idle workers are stopped after ``idle_timeout`` seconds (``clock`` readings), keeping
    ``min_workers`` per function. On stop, busy workers get ``grace_period`` seconds to finish.
    """

    def __init__(
        self,
        options: PoolOptions | None = None,
        *,
        grace_period: float = 10.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        finder: RuntimeFinder | None = None,
        launcher: Callable[[FunctionSpec, str], WorkerLaunch] | None = None,
    ) -> None:
        options = options or PoolOptions()
        self._launcher = launcher or Launcher()  # argv + env of a worker (sandbox.py)
        self._max_workers = options.max_workers
        self._min_workers = options.min_workers
        self._idle_timeout = options.idle_timeout
        self._grace_period = grace_period
        self._max_queue = max_queue
        self._clock = clock  # idle reaping
        self._wall_clock = wall_clock  # invocation deadlines are epoch seconds
        self._finder = finder or default_finder
        self._generation = 0
        self._pools: dict[FunctionSpec, FunctionPool] = {}
        self._draining: list[FunctionPool] = []  # old generations with workers still busy
        self._prewarm: list[FunctionPool] = []
        self._workers: set[Worker] = set()
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._wakeup = anyio.Event()
        self._changed: anyio.Event | None = None  # made when somebody waits for a change
        self._waiting: Waiting | None = None  # the event loop's; see run()

    # -- deploy -----------------------------------------------------------------------------

    def deploy(self, specs: Sequence[FunctionSpec], *, prewarm: bool = False) -> None:
        """Make ``specs`` the live generation; old workers drain.

        Every function gets fresh workers, even with an unchanged spec: the folder may hold
        new code (``flux dev`` redeploys in place), and a cold start costs tens of ms.
        """
        self._generation += 1
        old, self._pools = self._pools, {}
        for spec in specs:
            self._pools[spec] = FunctionPool(spec, self._generation, self._max_workers)
        for pool in old.values():
            self._retire(pool)
        self._prewarm = list(self._pools.values()) if prewarm else []
        if self._group is not None and not self._closed:
            self._start_prewarm()
        self._wakeup.set()
        self._notify()

    def refresh(self, names: Collection[str]) -> None:
        """Fresh workers for the functions in ``names`` (their environment changed): their
        current workers finish their in-flight invocations, then stop; others are untouched."""
        for spec, pool in list(self._pools.items()):
            if spec.name in names:
                self._retire(pool)
                self._pools[spec] = FunctionPool(spec, self._generation, self._max_workers)
        self._notify()

    def _retire(self, pool: FunctionPool) -> None:
        pool.draining = True
        for worker in pool.idle_workers:
            worker.request_stop()
            pool.workers.remove(worker)
        if pool.size or pool.in_flight or pool.waiters:
            self._draining.append(pool)

    def _pool_for(self, spec: FunctionSpec) -> FunctionPool:
        pool = self._pools.get(spec)
        if pool is None:
            # Not deployed (yet): serve it anyway, in the live generation, so a request routed
            # by a table one deploy behind still runs.
            pool = self._pools[spec] = FunctionPool(spec, self._generation, self._max_workers)
        return pool

    @property
    def waiting(self) -> Waiting:
        """The running event loop's hand-off primitives and clock (made on first use, in it)."""
        if self._waiting is None:
            self._waiting = Waiting()
        return self._waiting

    # -- capacity ---------------------------------------------------------------------------

    async def _acquire(
        self, pool: FunctionPool, wait: float, hard_end: float
    ) -> tuple[Worker, float]:
        """A worker slot for one call (FIFO) within ``wait`` seconds (or until ``hard_end``
        while workers are starting); returns the worker and the ms waited."""
        worker = pool.free_worker()
        if worker is not None and not pool.waiters:
            worker.load += 1
            return worker, 0.0
        if len(pool.waiters) >= self._max_queue:
            raise overloaded(pool.spec, f"{len(pool.waiters)} calls already waiting")
        waiting = self.waiting
        waiter = _Waiter(waiting.wakeup())
        pool.waiters.append(waiter)
        began = waiting.now()
        self._grow(pool)
        try:
            woken = await waiter.wakeup.wait(began + max(wait, 0.0))
            # Workers still starting (cold starts under load): they are coming for us, so wait
            # for them up to the whole budget rather than refuse a call they could serve.
            if not woken and pool.starting:
                await waiter.wakeup.wait(hard_end)
        except BaseException:
            if waiter.worker is not None:
                self._release(pool, waiter.worker)
            raise
        finally:
            if waiter in pool.waiters:
                pool.waiters.remove(waiter)
        if waiter.worker is not None:
            return waiter.worker, (waiting.now() - began) * 1000
        if waiter.failure is not None:
            raise waiter.failure
        raise overloaded(pool.spec, f"no free worker within {wait:.1f} s")

    def _dispatch(self, pool: FunctionPool) -> None:
        """Hand free slots to waiting calls, first come first served; grow if still short."""
        while pool.waiters:
            worker = pool.free_worker()
            if worker is None:
                break
            waiter = pool.waiters.popleft()
            worker.load += 1
            waiter.worker = worker
            waiter.wakeup.notify()
        if pool.waiters:
            self._grow(pool)

    def _grow(self, pool: FunctionPool) -> None:
        """Start workers while the calls waiting outnumber the slots on their way."""
        # A draining pool still serves the calls it admitted before the redeploy.
        if self._closed or self._group is None:
            return
        while pool.waiters and pool.size < pool.max_workers:
            if len(pool.waiters) <= pool.starting * pool.per_worker:
                return
            self._spawn(pool)

    def _spawn(self, pool: FunctionPool) -> None:
        assert self._group is not None
        pool.starting += 1
        self._group.start_soon(self._run_worker, pool)

    def _fail_waiters(self, pool: FunctionPool, failure: FunctionFailed) -> None:
        """A worker could not start: the calls waiting for one would fail the same way."""
        if pool.workers or pool.starting:
            return  # others may still serve them
        while pool.waiters:
            waiter = pool.waiters.popleft()
            waiter.failure = failure
            waiter.wakeup.notify()

    async def _run_worker(self, pool: FunctionPool) -> None:
        """Spawn, wait until ready, serve, and clean up after one worker of ``pool``."""
        spec = pool.spec
        counted = True
        try:
            executable = self._finder.find(spec.runtime)
            if executable is None:
                problem = self._finder.problem(spec.runtime) or ""
                raise FunctionFailed(502, "runtime_unavailable", problem)
            memory = spec.memory * 1024 * 1024 if spec.memory else None
            try:
                # The one place a worker is launched: argv and env from sandbox.py.
                launch = self._launcher(spec, executable)
                worker = await Worker.spawn(spec, list(launch.argv), launch.env_dict, memory)
            except OSError as exc:
                hint = self._finder.problem(spec.runtime) or f"{spec.runtime} could not start"
                raise FunctionFailed(502, "runtime_unavailable", f"{hint} ({exc})") from None
        except FunctionFailed as failure:
            pool.starting -= 1
            self._fail_waiters(pool, failure)
            return
        self._workers.add(worker)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._supervise, worker)
                await worker.ready.wait()
                pool.starting -= 1
                counted = False
                if worker.start_failure is not None:
                    worker.kill()
                    self._fail_waiters(pool, worker.start_failure)
                    return
                pool.learned_limit = worker.capacity_limit
                worker.ready_at = anyio.current_time()
                worker.last_used = self._clock()
                if self._closed or (pool.draining and not pool.waiters):
                    worker.request_stop()
                else:
                    pool.workers.append(worker)
                    self._dispatch(pool)
                    if pool.draining and worker.load == 0:
                        worker.request_stop()
                        pool.workers.remove(worker)
                self._notify()
        finally:
            if counted:
                pool.starting -= 1
            if worker in pool.workers:
                pool.workers.remove(worker)
            self._workers.discard(worker)
            self._dispatch(pool)  # calls still waiting may need a replacement
            self._notify()

    async def _supervise(self, worker: Worker) -> None:
        try:
            await worker.supervise()
        except Exception:
            # A bug here must not take the whole pool (and every other worker) down.
            logger.exception("supervising worker %d of %s failed", worker.pid, worker.spec.name)

    def _release(self, pool: FunctionPool, worker: Worker) -> None:
        worker.load -= 1
        if not worker.usable and worker in pool.workers:
            pool.workers.remove(worker)
        # Calls waiting go first, even in a draining pool: they were admitted before the
        # redeploy and are served by its workers (answering with the old version).
        self._dispatch(pool)
        if worker.load == 0:
            worker.last_used = self._clock()
            if pool.draining or self._closed:
                worker.request_stop()
                if worker in pool.workers:
                    pool.workers.remove(worker)
        self._notify()

    # -- invoke -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, spec: FunctionSpec, invocation: Invocation) -> AsyncIterator[Opened]:
        """Run one invocation; yield its :class:`Opened` once the head (or whole answer) is in.

        Raises :class:`FunctionFailed` (502/503/504) when it cannot answer. Leaving the block
        before a stream ended cancels the invocation (its worker has CANCEL_GRACE to let go,
        else it is killed). The whole stream stays bounded by the function's timeout.
        """
        if self._closed:
            raise FunctionFailed(502, "runtime_unavailable", "the gateway is shutting down")
        problem = self._finder.problem(spec.runtime)
        if problem:
            raise FunctionFailed(502, "runtime_unavailable", problem)
        if len(invocation.body) > protocol.MAX_BODY:
            raise FunctionFailed(413, "payload_too_large", "request body exceeds 6 MiB")
        pool = self._pool_for(spec)
        clock = self.waiting.now
        now = self._wall_clock()
        deadline = min(invocation.deadline, now + spec.timeout)
        began = clock()
        end_at = began + (deadline - now)
        wait = min(end_at - began, spec.timeout * QUEUE_WAIT)
        worker, waited_ms = await self._acquire(pool, wait, end_at)
        cold = worker.ready_at > began  # it had to start for this call
        pool.in_flight += 1
        call: Call | None = None
        reason = "done"
        try:
            try:
                request = _request_header(spec, invocation, deadline)
                call = await worker.start_call(request, invocation.body)
            except protocol.ProtocolError:  # it died between getting the slot and now
                message = f"function {spec.name}: its worker exited before the call started"
                raise FunctionFailed(502, "worker_lost", message, (), worker.pid) from None
            run_at = time.perf_counter()  # for run_ms and first_byte_ms: see Stream.started
            try:
                event = await call.next_event(end_at)
            except WorkerGone as lost:
                raise await self._lost(worker, call, lost) from None
            if event is None:  # the deadline passed before the function answered
                reason = "timeout"
                await self._let_go(worker, call, reason)
                elapsed = clock() - began
                message = (
                    f"function {spec.name} timed out after {elapsed:.1f} s "
                    f"(timeout {spec.timeout:g} s)"
                )
                raise FunctionFailed(
                    504, "function_timeout", message, call.logs.lines(), worker.pid
                )
            if isinstance(event, protocol.HandlerError):
                if event.code == "memory_limit_exceeded":
                    raise self._memory_failure(worker, call)
                message = f"function {spec.name} raised {event.error}"
                logs = (*call.logs.lines(), *log_lines("stderr", event.traceback))
                raise FunctionFailed(502, "function_error", message, logs, worker.pid)
            assert isinstance(event, protocol.Response)
            result = InvocationResult(
                status=event.status,
                headers=event.headers,
                body=b"" if event.streaming else event.body,
                logs=() if event.streaming else call.logs.lines(),
                worker_pid=worker.pid,
                cold_start=cold,
                queued_ms=0.0 if cold else waited_ms,
                startup_ms=waited_ms if cold else 0.0,
                run_ms=(time.perf_counter() - run_at) * 1000,
                streaming=event.streaming,
            )
            stream = Stream(call, event.body, end_at, run_at) if event.streaming else None
            answer = Opened(result, stream)
            try:
                yield answer
            finally:
                # Left before the stream ended: its timeout, an error, or the client went away.
                if answer.stream is not None and answer.stream.outcome == "streaming":
                    answer.stream.outcome = "disconnect"
                if answer.stream is not None and answer.stream.outcome == "timeout":
                    reason = "timeout"
                else:
                    reason = "disconnect"
        finally:
            if call is not None and not call.finished:
                with anyio.CancelScope(shield=True):
                    await self._let_go(worker, call, reason)
            pool.in_flight -= 1
            self._release(pool, worker)

    async def _let_go(self, worker: Worker, call: Call, reason: str) -> None:
        """Stop one invocation without disturbing its neighbours, unless the worker cannot."""
        if call.finished:
            return
        if reason == "timeout" and worker.capacity_limit == 1:
            worker.kill()  # a sync handler cannot be interrupted, and it has no neighbours
        else:
            await worker.cancel(call, reason)
            with anyio.move_on_after(CANCEL_GRACE):
                await call.wait_finished()
            if not call.finished:
                # It ignored the cancel (a busy loop, a blocked event loop): kill it; its other
                # invocations fail with 502 worker_lost.
                logger.warning(
                    "%s[%d] did not stop a cancelled invocation within %.0f s: killed",
                    worker.spec.name,
                    worker.pid,
                    CANCEL_GRACE,
                )
                worker.kill()
        with anyio.move_on_after(0.5):
            await call.wait_finished()

    def _memory_failure(self, worker: Worker, call: Call) -> FunctionFailed:
        limit = worker.spec.memory
        message = f"function {worker.spec.name} exceeded its memory limit of {limit} MiB"
        return FunctionFailed(502, "memory_limit_exceeded", message, call.logs.lines(), worker.pid)

    async def _lost(self, worker: Worker, call: Call, lost: WorkerGone) -> FunctionFailed:
        """The worker went away while ``call`` ran: say why, from the call's point of view."""
        if lost.code == "memory_limit_exceeded" or worker.memory_exceeded:
            return self._memory_failure(worker, call)
        if lost.code == "bad_function_response":
            message = f"function {worker.spec.name} answered malformed output: {lost.message}"
            return FunctionFailed(502, lost.code, message, call.logs.lines(), worker.pid)
        if worker.stop_requested.is_set() and lost.code == "worker_lost":
            # Killed by the gateway because of another invocation (or a stop): not its fault.
            message = f"function {worker.spec.name}: its worker had to be stopped ({lost.message})"
            return FunctionFailed(502, "worker_lost", message, call.logs.lines(), worker.pid)
        with anyio.move_on_after(0.5):
            await worker.process.wait()
        code = worker.process.returncode
        if code is None:
            how = "its worker closed the protocol pipe"
        elif code < 0:
            how = f"its worker was killed by {signal.Signals(-code).name}"
        else:
            how = f"its worker exited with code {code}"
        message = f"function {worker.spec.name} crashed: {how}"
        return FunctionFailed(502, "function_crashed", message, call.logs.lines(), worker.pid)

    async def invoke(self, spec: FunctionSpec, invocation: Invocation) -> InvocationResult:
        """Run one invocation to its end; a streamed body is collected (up to 6 MiB)."""
        async with self.open(spec, invocation) as answer:
            if answer.stream is None:
                return answer.result
            parts: list[bytes] = []
            size = 0
            async for chunk in answer.stream.chunks():
                size += len(chunk)
                if size > protocol.MAX_BODY:
                    raise FunctionFailed(
                        502,
                        "bad_function_response",
                        f"function {spec.name} streamed more than 6 MiB to a caller that "
                        "needs the whole body",
                        answer.stream.logs(),
                    )
                parts.append(chunk)
                await answer.stream.delivered(len(chunk))
            return attrs.evolve(
                answer.result, body=b"".join(parts), logs=answer.stream.logs(), streaming=False
            )

    # -- background -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the workers, reap idle ones, pre-warm; on exit, stop every worker."""
        if self._group is not None:
            raise RuntimeError("PoolManager.run() is already running")
        tick = max(0.05, min(1.0, self._idle_timeout / 4))
        self._waiting = Waiting()  # this run's event loop
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                task_status.started()
                while not self._closed:
                    with anyio.move_on_after(tick):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    self.reap_idle()
                    self._start_prewarm()
                # aclose() asked every worker to stop; the group waits for their tasks.
        finally:
            self._closed = True
            self._group = None

    def reap_idle(self) -> None:
        """Stop workers idle for ``idle_timeout`` (oldest first), keeping ``min_workers``."""
        now = self._clock()
        for pool in self._pools.values():
            for worker in sorted(pool.idle_workers, key=lambda w: w.last_used):
                if pool.size <= self._min_workers:
                    break
                if now - worker.last_used >= self._idle_timeout:
                    pool.workers.remove(worker)
                    worker.request_stop()
        self._draining = [p for p in self._draining if p.size or p.in_flight or p.waiters]

    def _start_prewarm(self) -> None:
        pools, self._prewarm = self._prewarm, []
        target = max(1, self._min_workers)
        for pool in pools:
            if pool.draining or self._finder.problem(pool.spec.runtime):
                continue
            for _ in range(target - pool.size):
                self._spawn(pool)

    async def aclose(self) -> None:
        """Stop accepting calls, let in-flight ones finish (grace period), stop all workers."""
        self._closed = True
        self._wakeup.set()
        for pool in self._all_pools():
            for waiter in pool.waiters:
                waiter.failure = FunctionFailed(
                    502, "runtime_unavailable", "the gateway is shutting down"
                )
                waiter.wakeup.notify()
            pool.waiters.clear()
            for worker in pool.idle_workers:
                worker.request_stop()
        with anyio.move_on_after(self._grace_period):
            await self._wait_until(lambda: not any(p.in_flight for p in self._all_pools()))
        for worker in list(self._workers):
            worker.request_stop()
        await self._wait_until(lambda: not self._workers)

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per function: workers ``busy``/``idle`` (busy includes starting), invocations
        ``in_flight`` and calls ``waiting`` for capacity."""
        out: dict[str, dict[str, int]] = {}
        for pool in self._all_pools():
            entry = out.setdefault(
                pool.spec.name, {"busy": 0, "idle": 0, "in_flight": 0, "waiting": 0}
            )
            idle = len(pool.idle_workers)
            entry["busy"] += len(pool.workers) - idle + pool.starting
            entry["idle"] += idle
            entry["in_flight"] += pool.in_flight
            entry["waiting"] += len(pool.waiters)
        return out

    def _all_pools(self) -> Iterable[FunctionPool]:
        return [*self._pools.values(), *self._draining]

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()


def _request_header(spec: FunctionSpec, invocation: Invocation, deadline: float) -> dict[str, Any]:
    """The ``invoke`` frame's fields; the caller's Authorization is dropped defensively,
    unless it is a verified user token (``auth`` type "jwt", docs/auth.md)."""
    keep_authorization = (invocation.auth or {}).get("type") == "jwt"
    headers = [
        (lower, value)
        for name, value in invocation.headers
        if (lower := name.lower()) != "authorization" or keep_authorization
    ]
    names = {name for name, _ in headers}
    if "x-request-id" not in names:
        headers.append(("x-request-id", invocation.request_id))
    if invocation.traceparent and "traceparent" not in names:
        headers.append(("traceparent", invocation.traceparent))
    pairs = invocation.query
    if not pairs and invocation.query_string:
        pairs = tuple(urllib.parse.parse_qsl(invocation.query_string, keep_blank_values=True))
    url = invocation.url
    if not url:
        host = dict(headers).get("host", "localhost")
        query = invocation.query_string or urllib.parse.urlencode(pairs)
        url = f"http://{host}{invocation.path}" + (f"?{query}" if query else "")
    return {
        "method": invocation.method,
        "url": url,
        "path": invocation.path,
        "query": pairs,  # tuples serialise as JSON arrays
        "headers": headers,
        "request_id": invocation.request_id,
        "function": spec.name,
        "deadline": deadline,
        "traceparent": invocation.traceparent,
        "auth": invocation.auth,
    }
