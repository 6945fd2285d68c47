"""Warm worker pools: one per deployed function, many invocations per worker
(docs/reference.md#runtimes).

:class:`PoolManager` is what the gateway holds. ``deploy()`` swaps in a new generation of
pools (old workers finish their in-flight invocation, then stop), ``invoke()`` runs one
invocation on a free worker under its deadline, ``run()`` is the background task that reaps
idle workers and pre-warms, and owns every worker's supervising task, so no process outlives it.

Failure mapping (docs/reference.md#status-codes): 504 ``function_timeout``; 502
``function_error`` (handler raised; the worker stays), ``function_crashed`` (the worker died),
``bad_function_response`` (malformed protocol output), ``function_failed_to_start``
(import/syntax error), ``runtime_unavailable`` (node/deno missing, or the pool is stopped).
A worker is reused only after a clean answer.
"""

from __future__ import annotations

import logging
import signal
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import anyio
import anyio.abc

from ..project import FunctionSpec
from . import protocol
from .api import FunctionFailed, Invocation, InvocationResult, LogLine
from .discovery import RuntimeFinder, default_finder
from .options import PoolOptions
from .process import Worker, WorkerGone, log_lines
from .sandbox import Launcher, WorkerLaunch

logger = logging.getLogger("fluxgw.runtime")

__all__ = ["PoolManager"]


class FunctionPool:
    """The workers of one function in one deploy generation."""

    def __init__(self, spec: FunctionSpec, generation: int, max_workers: int) -> None:
        self.spec = spec
        self.generation = generation
        # One slot per worker that may exist: waiting here counts against the deadline.
        self.slots = anyio.Semaphore(max_workers)
        self.idle: list[Worker] = []  # LIFO: the warmest worker first, the rest can be reaped
        self.busy: set[Worker] = set()
        self.starting = 0
        self.warming = 0  # pre-warm starts planned or running (their worker goes idle)
        self.draining = False

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    def take_idle(self) -> Worker | None:
        while self.idle:
            worker = self.idle.pop()
            if worker.usable:
                return worker
        return None


class PoolManager:
    """Per-function pools of warm workers.

    Each worker serves one invocation at a time. Concurrent invocations of one function use
    up to ``max_workers`` workers (default 4) per function; more wait for a free one, and the
    wait counts against the invocation's deadline. Idle workers are stopped after
    ``idle_timeout`` seconds (``clock`` readings), keeping ``min_workers`` per function. On
    stop, busy workers get up to ``grace_period`` seconds to finish their invocation.
    """

    def __init__(
        self,
        options: PoolOptions | None = None,
        *,
        grace_period: float = 10.0,
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
        self._clock = clock  # idle reaping
        self._wall_clock = wall_clock  # invocation deadlines are epoch seconds
        self._finder = finder or default_finder
        self._generation = 0
        self._pools: dict[FunctionSpec, FunctionPool] = {}
        self._draining: list[FunctionPool] = []  # old generations with workers still busy
        self._prewarm: list[FunctionPool] = []
        self._workers: set[Worker] = set()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._wakeup = anyio.Event()
        self._changed = anyio.Event()

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
        if self._tasks is not None and not self._closed:
            # Now, not at the run loop's next wake-up: a request arriving meanwhile would
            # cold-start a second worker next to the pre-warm one (see invoke()).
            self._start_prewarm(self._tasks)
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
        for worker in pool.idle:
            worker.request_stop()
        pool.idle.clear()
        if pool.size:
            self._draining.append(pool)

    def _pool_for(self, spec: FunctionSpec) -> FunctionPool:
        pool = self._pools.get(spec)
        if pool is None:
            # Not deployed (yet): serve it anyway, in the live generation, so a request routed
            # by a table one deploy behind still runs.
            pool = self._pools[spec] = FunctionPool(spec, self._generation, self._max_workers)
        return pool

    # -- invoke -----------------------------------------------------------------------------

    async def invoke(self, spec: FunctionSpec, invocation: Invocation) -> InvocationResult:
        """Run one invocation; raise :class:`FunctionFailed` (502/504) when it cannot answer."""
        if self._closed:
            raise FunctionFailed(502, "runtime_unavailable", "the gateway is shutting down")
        problem = self._finder.problem(spec.runtime)
        if problem:
            raise FunctionFailed(502, "runtime_unavailable", problem)
        if len(invocation.body) > protocol.MAX_BODY:
            raise FunctionFailed(413, "payload_too_large", "request body exceeds 6 MiB")
        pool = self._pool_for(spec)
        now = self._wall_clock()
        deadline = min(invocation.deadline, now + spec.timeout)
        request = _request_header(spec, invocation, deadline)
        logs: list[LogLine] = []
        worker: Worker | None = None
        phase = "waiting for a free worker"
        started = anyio.current_time()
        # One cancel scope covers the wait for a slot, the cold start and the call.
        with anyio.CancelScope(deadline=started + (deadline - now)) as scope:
            warm_wait_ms = 0.0
            if pool.warming and not pool.idle:
                # Its pre-warm worker is on the way (just deployed): wait for it rather than
                # start a second cold worker racing it for the CPU. Waited before taking a
                # slot, as the pre-warm may still need one.
                phase = "starting its worker"
                await self._wait_until(lambda: bool(pool.idle) or not pool.warming)
                warm_wait_ms = (anyio.current_time() - started) * 1000
            async with pool.slots:
                queued_ms = (anyio.current_time() - started) * 1000 - warm_wait_ms
                worker = pool.take_idle()
                cold, startup_ms = worker is None or warm_wait_ms > 0, warm_wait_ms
                if worker is None:
                    phase = "starting its worker"
                    spawn_at = anyio.current_time()
                    worker = await self._start_worker(pool)
                    startup_ms += (anyio.current_time() - spawn_at) * 1000
                phase = "running"
                pool.busy.add(worker)
                call_at = anyio.current_time()
                try:
                    answer = await worker.call(request, invocation.body, logs)
                except protocol.ProtocolError as exc:
                    raise FunctionFailed(
                        502,
                        "bad_function_response",
                        f"function {spec.name} answered malformed output: {exc}",
                        tuple(logs),
                        worker.pid,
                    ) from None
                except WorkerGone:
                    raise await self._crashed(worker, logs) from None
                finally:
                    self._release(pool, worker)
                run_ms = (anyio.current_time() - call_at) * 1000
            if isinstance(answer, protocol.HandlerError):
                logs.extend(log_lines("stderr", answer.traceback))
                message = f"function {spec.name} raised {answer.error}"
                raise FunctionFailed(502, "function_error", message, tuple(logs), worker.pid)
            return InvocationResult(
                status=answer.status,
                headers=answer.headers,
                body=answer.body,
                logs=tuple(logs),
                worker_pid=worker.pid,
                cold_start=cold,
                queued_ms=queued_ms,
                startup_ms=startup_ms,
                run_ms=run_ms,
            )
        assert scope.cancelled_caught
        if worker is not None:
            worker.kill()  # mid-conversation: its pipes are out of sync, never reuse it
        elapsed = anyio.current_time() - started
        message = (
            f"function {spec.name} timed out after {elapsed:.1f} s while {phase} "
            f"(timeout {spec.timeout:g} s)"
        )
        raise FunctionFailed(
            504, "function_timeout", message, tuple(logs), worker.pid if worker else 0
        )

    async def _crashed(self, worker: Worker, logs: list[LogLine]) -> FunctionFailed:
        # A moment for its own exit status first: in the sandbox, bwrap passes the function's
        # exit code on a few ms after the pipe closed, and a kill now would hide it.
        with anyio.move_on_after(0.2):
            await worker.process.wait()
        worker.kill()
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
        return FunctionFailed(502, "function_crashed", message, tuple(logs), worker.pid)

    async def _start_worker(self, pool: FunctionPool) -> Worker:
        """Spawn a worker for ``pool`` and wait until its module is loaded."""
        tasks = self._tasks
        if tasks is None or self._closed:
            raise FunctionFailed(502, "runtime_unavailable", "the runtime pool is not running")
        spec = pool.spec
        executable = self._finder.find(spec.runtime)
        if executable is None:
            raise FunctionFailed(
                502, "runtime_unavailable", self._finder.problem(spec.runtime) or ""
            )
        try:
            launch = self._launcher(spec, executable)
            worker = await Worker.spawn(spec, list(launch.argv), launch.env_dict)
        except OSError as exc:
            hint = self._finder.problem(spec.runtime) or f"{spec.runtime} could not be started"
            raise FunctionFailed(502, "runtime_unavailable", f"{hint} ({exc})") from None
        self._workers.add(worker)
        tasks.start_soon(self._supervise, pool, worker)
        pool.starting += 1
        try:
            await worker.wait_ready()
        except BaseException:
            worker.kill()
            raise
        finally:
            pool.starting -= 1
        return worker

    def _release(self, pool: FunctionPool, worker: Worker) -> None:
        """After a call: back to idle if it answered cleanly and is still wanted, else stop."""
        pool.busy.discard(worker)
        worker.last_used = self._clock()
        if worker.usable and not pool.draining and not self._closed:
            pool.idle.append(worker)
        elif worker.protocol.state is protocol.State.IDLE:
            worker.request_stop()  # clean but unwanted (old generation, shutting down)
        else:
            worker.kill()
        self._notify()

    async def _supervise(self, pool: FunctionPool, worker: Worker) -> None:
        try:
            await worker.supervise()
        except Exception:
            # A bug here must not take the whole pool (and every other worker) down.
            logger.exception("supervising worker %d of %s failed", worker.pid, pool.spec.name)
        finally:
            self._workers.discard(worker)
            if worker in pool.idle:
                pool.idle.remove(worker)  # died while idle (a background thread crashed it)
            self._notify()

    # -- background -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Reap idle workers, pre-warm, own the workers; on exit, stop every worker."""
        if self._tasks is not None:
            raise RuntimeError("PoolManager.run() is already running")
        tick = max(0.05, min(1.0, self._idle_timeout / 4))
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                task_status.started()
                while not self._closed:
                    with anyio.move_on_after(tick):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    self.reap_idle()
                    self._start_prewarm(tasks)
                # aclose() asked every worker to stop; the task group waits for their
                # supervisors.
        finally:
            # Cancelled (server stop): each supervisor terminates its worker under a shield.
            self._closed = True
            self._tasks = None

    def reap_idle(self) -> None:
        """Stop workers idle for ``idle_timeout`` (oldest first), keeping ``min_workers``."""
        now = self._clock()
        for pool in self._pools.values():
            for worker in sorted(pool.idle, key=lambda w: w.last_used):
                if pool.size <= self._min_workers:
                    break
                if now - worker.last_used >= self._idle_timeout:
                    pool.idle.remove(worker)
                    worker.request_stop()
        self._draining = [pool for pool in self._draining if pool.size]

    def _start_prewarm(self, tasks: anyio.abc.TaskGroup) -> None:
        pools, self._prewarm = self._prewarm, []
        target = max(1, self._min_workers)
        for pool in pools:
            if pool.draining or self._finder.problem(pool.spec.runtime):
                continue
            for _ in range(target - pool.size):
                pool.warming += 1
                tasks.start_soon(self._prewarm_one, pool)

    async def _prewarm_one(self, pool: FunctionPool) -> None:
        try:
            async with pool.slots:
                try:
                    worker = await self._start_worker(pool)
                except FunctionFailed as exc:
                    logger.warning("pre-warming %s failed: %s", pool.spec.name, exc.message)
                    return
                self._release(pool, worker)
        finally:
            pool.warming -= 1
            self._notify()  # requests waiting for this worker go on (take it or start one)

    async def aclose(self) -> None:
        """Stop all workers (idempotent): idle ones now, busy ones after their invocation
        (at most ``grace_period`` s); returns when every worker process is gone."""
        self._closed = True
        self._wakeup.set()
        for pool in self._all_pools():
            for worker in pool.idle:
                worker.request_stop()
            pool.idle.clear()
        with anyio.move_on_after(self._grace_period):
            await self._wait_until(lambda: not any(p.busy or p.starting for p in self._all_pools()))
        for worker in list(self._workers):
            worker.request_stop()
        await self._wait_until(lambda: not self._workers)

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """``{function: {"busy": n, "idle": n}}``; busy includes workers still starting."""
        out: dict[str, dict[str, int]] = {}
        for pool in self._all_pools():
            entry = out.setdefault(pool.spec.name, {"busy": 0, "idle": 0})
            entry["busy"] += len(pool.busy) + pool.starting
            entry["idle"] += len(pool.idle)
        return out

    def _all_pools(self) -> Iterable[FunctionPool]:
        return [*self._pools.values(), *self._draining]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()


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
    pairs = invocation.query or tuple(
        urllib.parse.parse_qsl(invocation.query_string, keep_blank_values=True)
    )
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
