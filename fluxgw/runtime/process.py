"""One worker subprocess: spawn it, multiplex invocations over its pipes, stop or kill its group.

The decisions (which worker, when to start or stop one) live in :mod:`fluxgw.runtime.pool`;
the byte rules in :mod:`fluxgw.runtime.protocol`. This module is the I/O between them.

Pipes of a worker: one (``FLUX_REQUEST_FD``) carries the gateway's frames, another
(``FLUX_PROTOCOL_FD``) the worker's; its stdin is /dev/null, so a child process it spawns with
an inherited stdin (deno's ``Deno.Command`` default) cannot swallow frames; its fd 1 and fd 2
share one more pipe that the worker's reader drains (bounded: :mod:`.output`), so a function
writing there can neither block nor corrupt anything. Every worker leads its own process
group and is always stopped by signalling the whole group: its grandchildren die with it.

A worker over its memory limit (RSS of its process tree, sampled every MEMORY_INTERVAL) is
killed; its in-flight invocations fail with 502 ``memory_limit_exceeded``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import resource
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from ..project import FunctionSpec
from ..tls import function_env
from . import protocol
from .api import FunctionFailed, LogLine
from .child import ChildProcess
from .output import MAX_LINES, LineSplitter, LogBuffer
from .wakeup import Waiting, Wakeup

logger = logging.getLogger("fluxgw.runtime")

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a worker
READ_SIZE = 256 * 1024
MEMORY_INTERVAL = 0.05  # seconds between RSS samples of a worker with a memory limit
# Only what a runtime needs: the gateway's own environment may hold secrets.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")
_PAGE = os.sysconf("SC_PAGE_SIZE")
# What node and deno print on fd 2 when V8 runs out of heap just before they abort.
V8_OOM_MARKERS = (b"heap out of memory", b"Fatal process out of memory", b"Fatal JavaScript")


class WorkerGone(Exception):
    """The worker's process ended (or its stream broke) while an invocation was running."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "worker_lost", "bad_function_response", "memory_limit_exceeded"
        self.message = message


def worker_env(spec: FunctionSpec, protocol_fd: int) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.update(
        FLUX_PROTOCOL_FD=str(protocol_fd),
        FLUX_FUNCTION=spec.name,
        FLUX_RUNTIME=spec.runtime,
        NO_COLOR="1",  # error messages become log lines, not terminal escapes
    )
    env.update(function_env(spec.runtime))  # trust the gateway's local CA (docs/tls.md)
    if spec.runtime == "deno":
        # A writable module/TypeScript cache shared by all workers (compiles once), no
        # update check reaching out to the network.
        default_dir = Path(tempfile.gettempdir()) / f"fluxgw-deno-{os.getuid()}"
        env["DENO_DIR"] = os.environ.get("DENO_DIR") or str(default_dir)
        env["DENO_NO_UPDATE_CHECK"] = "1"
        env["DENO_NO_PROMPT"] = "1"
    return env


class TreeRss:
    """Resident bytes of a process and all its descendants (0 when it is gone).

    Sampled often (every MEMORY_INTERVAL per worker), so the root's /proc files stay open and
    are re-read with pread, one syscall each instead of open/read/close (profiled at ~2 % of a
    busy gateway's CPU with two workers); :meth:`close` releases them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._statm: int | None = None
        self._children: int | None = None
        with contextlib.suppress(OSError):
            self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
            self._children = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY)

    def sample(self) -> int:
        if self._statm is None or self._children is None:
            return 0
        try:
            total = int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE
            todo = [int(child) for child in os.pread(self._children, 4096, 0).split()]
        except (OSError, ValueError, IndexError):
            return 0
        seen = {self.pid}
        while todo:  # descendants are rare: plain open/read for them
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            try:
                with open(f"/proc/{current}/statm", "rb") as handle:
                    total += int(handle.read().split()[1]) * _PAGE
                with open(f"/proc/{current}/task/{current}/children", "rb") as handle:
                    todo.extend(int(child) for child in handle.read().split())
            except (OSError, ValueError, IndexError):
                continue
        return total

    def close(self) -> None:
        for fd in (self._statm, self._children):
            if fd is not None:
                os.close(fd)
        self._statm = self._children = None


class PipeStream:
    """One end of an ``os.pipe()`` as a byte stream, on any anyio backend.

    anyio has no equivalent of trio's ``FdStream``: on trio this waits with
    ``anyio.wait_readable`` / ``wait_writable``. On asyncio, reading keeps the descriptor
    registered with the loop between reads instead: anyio's ``wait_readable`` registers and
    unregisters it on every wait (two epoll_ctl calls and a few dict operations per frame; this
    stream carries every answer of a warm worker).
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        if sniffio.current_async_library() == "asyncio":
            self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._watching = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive_some(self, max_bytes: int, *, cancel_point: bool = True) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream.

        With ``cancel_point=False`` a pending cancel is noticed only when the read has to
        wait, on asyncio (trio always checks): anyio's check there costs a task-state lookup,
        ~4 % of a warm call when done for every answer."""
        if cancel_point or self._loop is None:
            await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                return os.read(self.fd, max_bytes)
            except BlockingIOError:
                if self._loop is None:
                    await anyio.wait_readable(self.fd)
                else:
                    await self._readable_asyncio(self._loop)

    async def _readable_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._waiter is not None:
            raise anyio.BusyResourceError("reading from")
        waiter = self._waiter = loop.create_future()
        if not self._watching:
            loop.add_reader(self.fd, self._on_readable)
            self._watching = True
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Nobody is reading (epoll is level-triggered: it would call again on every pass).
            self._unwatch()
        else:
            waiter.set_result(None)

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._watching = False

    def send_nowait(self, data: bytes) -> int:
        """Write what the pipe takes now, without waiting: the bytes written (maybe 0)."""
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError):
            raise anyio.BrokenResourceError from None

    async def send_all(self, data: bytes) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
            except (BrokenPipeError, ConnectionResetError):
                raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._unwatch()
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(anyio.ClosedResourceError())
            anyio.notify_closing(self.fd)  # wakes a task waiting on it
            os.close(self.fd)
        await anyio.lowlevel.checkpoint()


class Call:
    """The gateway side of one invocation on a worker: its events, its log lines.

    The task running the call waits on a :class:`~.wakeup.Wakeup` that the worker's reader
    notifies; ``_done`` (an anyio.Event) is made only when somebody waits for the end."""

    def __init__(self, worker: Worker, invocation_id: int, wakeup: Wakeup) -> None:
        self.worker = worker
        self.id = invocation_id
        self.logs = LogBuffer()
        self.events: collections.deque[protocol.Event] = collections.deque()
        self.lost: WorkerGone | None = None
        self.finished = False  # the worker no longer runs it (or is gone)
        self._done: anyio.Event | None = None
        self._wakeup = wakeup

    def deliver(self, event: protocol.Event) -> None:
        self.events.append(event)
        self._wakeup.notify()

    def fail(self, lost: WorkerGone) -> None:
        if self.lost is None:
            self.lost = lost
        self._wakeup.notify()
        self.finish()

    def finish(self) -> None:
        self.finished = True
        if self._done is not None:
            self._done.set()

    async def wait_finished(self) -> None:
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    async def next_event(self, deadline: float) -> protocol.Event | None:
        """The next answer event of this invocation, or ``None`` if ``deadline`` (event loop
        clock) passes first; raises WorkerGone if the worker is lost."""
        while not self.events:
            if self.lost is not None:
                raise self.lost
            if not await self._wakeup.wait(deadline):
                return None
        return self.events.popleft()


class Worker:
    """A running worker process of one function, serving up to ``capacity`` calls at once."""

    def __init__(
        self,
        spec: FunctionSpec,
        process: ChildProcess,
        answers: PipeStream,
        requests: PipeStream,
        memory_limit: int | None = None,
    ) -> None:
        self.spec = spec
        self.process = process
        self.pid: int = process.pid
        self.protocol = protocol.WorkerProtocol()
        self.memory_limit = memory_limit  # bytes of RSS, None = unlimited
        self.memory_exceeded = False
        self.killed = False  # by the gateway (kill()): its calls answer worker_lost
        self.peak_rss = 0
        self._answers = answers
        self._requests = requests
        self._write_lock = anyio.Lock()
        self.calls: dict[int, Call] = {}
        self.load = 0  # calls reserved or running on it (the pool's bookkeeping)
        self.last_used = 0.0  # pool clock reading when it last became idle
        self.ready = anyio.Event()
        self.ready_at = 0.0  # anyio clock reading (set by the pool)
        self.start_failure: FunctionFailed | None = None
        self.stop_requested = anyio.Event()
        self.exited = anyio.Event()
        # Neither asked to stop nor exited. A plain flag next to the two Events: the pool
        # asks every worker for it on each call (two Event.is_set() were ~4 % of a warm call).
        self.alive = True
        self.returncode: int | None = None
        self._startup_logs = LogBuffer()
        self._own_lines = 0  # lines sent to the gateway's log this minute
        self._own_window = time.monotonic()
        self._splitter = LineSplitter(self._raw_target, self._log_own)
        self._output_done = anyio.Event()
        self._output: PipeStream | None = None  # fd 1/2 of the worker (set by spawn)
        self.waiting = Waiting()  # made in the event loop that serves this worker

    @classmethod
    async def spawn(
        cls,
        spec: FunctionSpec,
        command: list[str],
        env: Mapping[str, str] | None = None,
        memory_limit: int | None = None,
    ) -> Worker:
        """Start the process (not yet ready: its :meth:`supervise` task reads ``ready``);
        ``env`` replaces the default environment (the launcher in :mod:`.sandbox` builds it)."""
        read_fd, write_fd = os.pipe()
        request_read, request_write = os.pipe()
        if env is None:
            env = worker_env(spec, write_fd)
        else:
            env = {**env, "FLUX_PROTOCOL_FD": str(write_fd)}
        env["FLUX_REQUEST_FD"] = str(request_read)
        output_read, output_write = os.pipe()
        try:
            # From this (the loop's) thread, not anyio.open_process: see child.py.
            process = ChildProcess.start(
                command,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(write_fd, request_read),
                cwd=str(spec.directory),
                env=env,
            )
        except BaseException:
            os.close(read_fd)
            os.close(request_write)
            os.close(output_read)
            raise
        finally:
            # The child holds them now; our copies would hide its EOF / keep its input open.
            os.close(write_fd)
            os.close(request_read)
            os.close(output_write)
        if memory_limit is not None:
            # A hard backstop under the RSS watchdog: a cap on private writable memory
            # (python gets MemoryError, V8 aborts), so even an allocation faster than the
            # watchdog's sampling cannot take the machine's memory.
            with contextlib.suppress(OSError, ValueError):
                # +1 GiB: deno reserves ~700 MiB of writable address space at start.
                backstop = 2 * memory_limit + 1024 * 1024 * 1024
                resource.prlimit(process.pid, resource.RLIMIT_DATA, (backstop, backstop))
        worker = cls(spec, process, PipeStream(read_fd), PipeStream(request_write), memory_limit)
        worker._output = PipeStream(output_read)
        return worker

    @property
    def usable(self) -> bool:
        return self.alive and self.protocol.state is protocol.WorkerState.READY

    @property
    def capacity_limit(self) -> int | None:
        """The worker's own limit (a sync python handler: 1); None before ready or unlimited."""
        return self.protocol.concurrency

    # -- invocations ------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        # If it died, writing fails: the reader then reports how (end of stream).
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            if not self._write_lock.locked():
                # The common case: the frame fits in the pipe at once. No lock, no yield to
                # the event loop (anyio's Lock.acquire always yields once: profiled at ~10 %
                # of a warm call). Frames from two tasks never interleave: nothing else can
                # run between this write and taking the lock for the rest.
                written = self._requests.send_nowait(data)
                if written == len(data):
                    return
                data = data[written:]
                self._write_lock.acquire_nowait()
                try:
                    await self._requests.send_all(data)
                finally:
                    self._write_lock.release()
                return
            async with self._write_lock:
                await self._requests.send_all(data)

    async def start_call(self, request: dict[str, Any], body: bytes) -> Call:
        """Send an invocation; its answer arrives as events on the returned Call."""
        invocation_id, frame = self.protocol.send_invoke(request, body)
        call = self.calls[invocation_id] = Call(self, invocation_id, self.waiting.wakeup())
        await self._write(frame)
        return call

    async def cancel(self, call: Call, reason: str) -> None:
        """Ask the worker to stop ``call`` (the caller waits for ``call`` to finish, then kills)."""
        if self.protocol.state is protocol.WorkerState.READY:
            await self._write(self.protocol.send_cancel(call.id, reason))

    async def credit(self, call: Call, nbytes: int) -> None:
        """``nbytes`` of ``call``'s stream reached the client: the worker may send more."""
        if self.protocol.state is protocol.WorkerState.READY:
            await self._write(self.protocol.consumed(call.id, nbytes))

    # -- output -----------------------------------------------------------------------------

    def _raw_target(self) -> LogBuffer | None:
        """Raw fd 1/2 lines carry no invocation id: they belong to a call only when it is the
        only one running; otherwise they go to the gateway's log."""
        if len(self.calls) == 1:
            return next(iter(self.calls.values())).logs
        if not self.ready.is_set():
            return self._startup_logs
        return None

    def _log_own(self, line: LogLine) -> None:
        """The gateway's log, at most MAX_LINES lines per minute per worker."""
        now = time.monotonic()
        if now - self._own_window > 60:
            self._own_window, self._own_lines = now, 0
        self._own_lines += 1
        if self._own_lines <= MAX_LINES:
            logger.info("%s[%d] %s: %s", self.spec.name, self.pid, line.stream, line.text)

    def _route_log(self, event: protocol.Log) -> None:
        line = LogLine(event.timestamp, event.stream, event.text)
        call = self.calls.get(event.id) if event.id is not None else None
        if call is not None:
            call.logs.add(line)
        elif not self.ready.is_set():
            self._startup_logs.add(line)
        else:
            self._log_own(line)

    # -- the reader -------------------------------------------------------------------------

    async def _read_answers(self) -> None:
        """Route every event to its call until the stream ends or breaks."""
        lost = WorkerGone("worker_lost", "its worker exited")
        try:
            while True:
                if self.killed:  # by the gateway: its calls are lost, not malformed
                    lost = WorkerGone("worker_lost", "the gateway had to kill its worker")
                    return
                try:
                    event = self.protocol.next_event()
                except protocol.ProtocolError as exc:
                    lost = WorkerGone("bad_function_response", f"malformed worker output: {exc}")
                    self.kill()
                    return
                if event is protocol.NEED_DATA:
                    try:
                        # The loop stops on ``killed`` without a cancel: see receive_some.
                        data = await self._answers.receive_some(READ_SIZE, cancel_point=False)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        data = b""
                    self.protocol.receive_data(data)
                    continue
                if isinstance(event, protocol.Log):
                    self._route_log(event)
                elif isinstance(event, protocol.Ready):
                    for line in self._startup_logs.lines():  # import-time prints: no invocation
                        self._log_own(line)
                    self._startup_logs = LogBuffer()
                    self.ready.set()
                elif isinstance(event, protocol.StartFailed):
                    logs = (*self._startup_logs.lines(), *log_lines("stderr", event.traceback))
                    message = f"function {self.spec.name} failed to start: {event.error}"
                    self.start_failure = FunctionFailed(
                        502, "function_failed_to_start", message, logs, self.pid
                    )
                    self.ready.set()
                elif isinstance(event, protocol.Closed):
                    return
                elif not isinstance(event, protocol._NeedData):
                    self._route_answer(event)
        finally:
            if self.memory_exceeded:
                limit_mib = (self.memory_limit or 0) // (1024 * 1024)
                lost = WorkerGone(
                    "memory_limit_exceeded",
                    f"its worker exceeded the function's memory limit of {limit_mib} MiB "
                    f"and was killed",
                )
            self._lose_all(lost)

    def _route_answer(self, event: protocol.Event) -> None:
        call = self.calls.get(getattr(event, "id", -1))
        if call is None:
            return
        if isinstance(event, protocol.HandlerError) and event.code == "memory_limit_exceeded":
            self.memory_exceeded = True
        final = self.protocol.invocation_state(call.id) is protocol.InvState.DONE
        if final and len(self.calls) == 1:
            self._drain_now()
        call.deliver(event)
        if final:
            del self.calls[call.id]
            call.finish()

    def _lose_all(self, lost: WorkerGone) -> None:
        if not self.ready.is_set():
            if self.start_failure is None:
                logs = self._startup_logs.lines()
                last = logs[-1].text if logs else "it exited before loading the function"
                self.start_failure = FunctionFailed(
                    502,
                    "function_failed_to_start",
                    f"function {self.spec.name} failed to start: {last}",
                    logs,
                    self.pid,
                )
            self.ready.set()
        for call in list(self.calls.values()):
            call.fail(lost)
        self.calls.clear()

    # -- lifecycle --------------------------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        # Lookup/permission errors: the whole group is already gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group now; its in-flight calls fail, it is never reused."""
        self.killed = True
        self.protocol.mark_broken()
        self._signal_group(signal.SIGKILL)
        self.request_stop()

    def request_stop(self) -> None:
        """Ask :meth:`supervise` to stop this worker gracefully (SIGTERM, then SIGKILL)."""
        self.alive = False
        self.stop_requested.set()

    async def _wait_exit(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.process.wait()
            self.returncode = self.process.returncode

    async def supervise(self) -> None:
        """Own the process until it is gone: read its frames, drain fd 1/2, watch its memory,
        honour stop requests, reap it.

        Runs in the pool's task group; on cancellation (server stop) it still terminates the
        group (SIGTERM, SIGKILL after KILL_GRACE) under a shield, so no process outlives it.
        """
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._drain_output)
                group.start_soon(self._stop_when_requested)
                if self.memory_limit is not None:
                    group.start_soon(self._watch_memory)
                group.start_soon(self._reap)
                await self._read_answers()
                await self.process.wait()
                self.returncode = self.process.returncode
                # Children may still hold fd 1/2 open: kill the group, then let the drain
                # read what is left in the pipe for a moment.
                self._signal_group(signal.SIGKILL)
                with anyio.move_on_after(0.2):
                    await self._output_done.wait()
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self.process.returncode is None:
                    self._signal_group(signal.SIGTERM)
                    await self._wait_exit(KILL_GRACE)
                self._signal_group(signal.SIGKILL)
                await self.process.wait()
                self.returncode = self.process.returncode
                self._lose_all(WorkerGone("worker_lost", "its worker was stopped"))
                for stream in (self._answers, self._requests, self._output):
                    if stream is not None:
                        await stream.aclose()
                self.alive = False
                self.exited.set()

    async def _reap(self) -> None:
        """When the worker itself exits, kill what is left of its group: a child still holding
        its answer pipe would otherwise hide the exit from the reader (and its calls)."""
        await self.process.wait()
        self.returncode = self.process.returncode
        self._signal_group(signal.SIGKILL)

    async def _stop_when_requested(self) -> None:
        await self.stop_requested.wait()
        with anyio.move_on_after(0.1):
            await self._requests.aclose()  # end of input: the worker exits
        self._signal_group(signal.SIGTERM)
        await anyio.sleep(KILL_GRACE)
        self._signal_group(signal.SIGKILL)

    async def _watch_memory(self) -> None:
        assert self.memory_limit is not None
        meter = TreeRss(self.pid)
        try:
            await self._watch_rss(meter, self.memory_limit)
        finally:
            meter.close()

    async def _watch_rss(self, meter: TreeRss, limit: int) -> None:
        while True:
            rss = meter.sample()
            self.peak_rss = max(self.peak_rss, rss)
            if rss > limit:
                logger.warning(
                    "%s[%d] uses %d MiB, over its memory limit of %d MiB: killed",
                    self.spec.name,
                    self.pid,
                    rss // (1024 * 1024),
                    limit // (1024 * 1024),
                )
                self.memory_exceeded = True
                self.kill()
                return
            await anyio.sleep(MEMORY_INTERVAL)

    async def _drain_output(self) -> None:
        """Read the fd 1/2 pipe, bounded: lines go to the only call running, if any."""
        stream = self._output
        assert stream is not None
        try:
            while True:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                if not data:
                    break
                self._feed_output(data)
        finally:
            self._splitter.close()
            self._output_done.set()

    def _feed_output(self, data: bytes) -> None:
        if any(marker in data for marker in V8_OOM_MARKERS):
            self.memory_exceeded = True  # V8 hit its heap cap (--max-old-space-size)
        self._splitter.feed(data)

    def _drain_now(self) -> None:
        """Read what fd 1/2 already holds, without waiting: output written before the answer
        (a child's, a raw write) then lands in the call that is finishing, not after it."""
        stream = self._output
        if stream is None or stream.closed:
            return
        for _ in range(16):  # bounded: a flood keeps going through the background drain
            try:
                data = os.read(stream.fd, READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._feed_output(data)

    def startup_logs(self) -> tuple[LogLine, ...]:
        return self._startup_logs.lines()


def log_lines(stream: str, text: str) -> list[LogLine]:
    """A traceback or other text as log lines of one stream, stamped now."""
    now = time.time()
    return [LogLine(now, stream, line) for line in text.rstrip("\n").splitlines()]
