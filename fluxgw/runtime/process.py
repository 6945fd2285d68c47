"""One worker subprocess: spawn it, talk the protocol over its pipes, stop or kill its group.

The decisions (which worker, when to stop it) live in :mod:`fluxgw.runtime.pool`; the byte
rules live in :mod:`fluxgw.runtime.protocol`. This module is the I/O between them.

Pipes of a worker: a dedicated pipe (``FLUX_REQUEST_FD``) carries requests and another
(``FLUX_PROTOCOL_FD``) its answers; its stdin is /dev/null, so a child process it spawns with an
inherited stdin (deno's ``Deno.Command`` default) cannot swallow request frames; its fd 1 and
fd 2 share one more pipe that :meth:`Worker.supervise` drains, so a
function (or a child it spawned) writing there can neither block nor corrupt anything.
Every worker is the leader of its own session/process group, and is always stopped by
signalling the whole group: a function's grandchildren die with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ..project import FunctionSpec
from ..tls import function_env
from . import protocol
from .api import FunctionFailed, LogLine

logger = logging.getLogger("fluxgw.runtime")

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a worker
READ_SIZE = 256 * 1024
# Only what a runtime needs: the gateway's own environment may hold secrets.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")


class WorkerGone(Exception):
    """The worker's process ended (or its stream closed) in the middle of a conversation."""


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


class PipeStream:
    """One end of an ``os.pipe()`` as a byte stream.

    anyio has no equivalent of trio's ``FdStream`` (its streams wrap sockets, files and a
    process's own stdio), so this waits on the descriptor with ``anyio.wait_readable`` /
    ``wait_writable``, which works on trio and asyncio (uvloop included) alike.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._closed = False

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                return os.read(self.fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)

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
            anyio.notify_closing(self.fd)  # wakes a task waiting on it
            os.close(self.fd)
        await anyio.lowlevel.checkpoint()


def log_lines(stream: str, text: str) -> list[LogLine]:
    """A traceback or other text as log lines of one stream, stamped now."""
    now = time.time()
    return [LogLine(now, stream, line) for line in text.rstrip("\n").splitlines()]


class Worker:
    """A running worker process of one function."""

    def __init__(
        self,
        spec: FunctionSpec,
        process: anyio.abc.Process,
        answers: PipeStream,
        requests: PipeStream,
    ) -> None:
        self.spec = spec
        self.process = process
        self.pid: int = process.pid
        self.protocol = protocol.WorkerProtocol()
        self._answers = answers
        self._requests = requests
        self.sink: list[LogLine] | None = None  # the current invocation's log lines
        self.last_used = 0.0  # pool clock reading when it last became idle
        self.stop_requested = anyio.Event()
        self.exited = anyio.Event()
        self.returncode: int | None = None
        self._output_done = anyio.Event()

    @classmethod
    async def spawn(
        cls, spec: FunctionSpec, command: list[str], env: Mapping[str, str] | None = None
    ) -> Worker:
        """Start the process (not yet ready: call :meth:`wait_ready`); ``env`` replaces the
        default environment (the launcher in :mod:`.sandbox` builds it)."""
        read_fd, write_fd = os.pipe()
        request_read, request_write = os.pipe()
        if env is None:
            env = worker_env(spec, write_fd)
        else:
            env = {**env, "FLUX_PROTOCOL_FD": str(write_fd)}
        env["FLUX_REQUEST_FD"] = str(request_read)
        try:
            process = await anyio.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd, request_read),
                start_new_session=True,  # its own process group: killpg reaches grandchildren
                cwd=str(spec.directory),
                env=env,
            )
        except BaseException:
            os.close(read_fd)
            os.close(request_write)
            raise
        finally:
            # The child holds them now; our copies would hide its EOF / keep its input open.
            os.close(write_fd)
            os.close(request_read)
        return cls(spec, process, PipeStream(read_fd), PipeStream(request_write))

    @property
    def alive(self) -> bool:
        return not self.exited.is_set() and not self.stop_requested.is_set()

    @property
    def usable(self) -> bool:
        return self.alive and self.protocol.state is protocol.State.IDLE

    # -- protocol ---------------------------------------------------------------------------

    async def _next_event(self) -> protocol.Event:
        """The next non-log event; log lines go to the current sink (or the gateway's log)."""
        while True:
            event = self.protocol.next_event()
            if event is protocol.NEED_DATA:
                try:
                    data = await self._answers.receive_some(READ_SIZE)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    data = b""
                self.protocol.receive_data(data)
                continue
            if isinstance(event, protocol.Log):
                self._record(LogLine(event.timestamp, event.stream, event.text))
                continue
            assert not isinstance(event, protocol._NeedData)
            return event

    def _record(self, line: LogLine) -> None:
        if self.sink is not None:
            self.sink.append(line)
        else:
            logger.info("%s[%d] %s: %s", self.spec.name, self.pid, line.stream, line.text)

    async def wait_ready(self) -> None:
        """Wait for the ``ready`` frame; raise FunctionFailed(502) if the module fails to load."""
        self.sink = []
        try:
            event = await self._next_event()
        except protocol.ProtocolError as exc:
            raise self._failure(
                "bad_function_response", f"malformed worker output: {exc}"
            ) from None
        finally:
            startup_logs, self.sink = self.sink, None
        for line in startup_logs:  # prints at import time belong to no invocation
            logger.info("%s[%d] %s: %s", self.spec.name, self.pid, line.stream, line.text)
        if isinstance(event, protocol.Ready):
            return
        if isinstance(event, protocol.StartFailed):
            logs = (*startup_logs, *log_lines("stderr", event.traceback))
            message = f"function {self.spec.name} failed to start: {event.error}"
            raise FunctionFailed(502, "function_failed_to_start", message, logs, self.pid)
        # It exited before saying anything: a broken runtime or shim. Show its last words.
        await self._wait_exit(0.5)
        last = startup_logs[-1].text if startup_logs else f"exit code {self.returncode}"
        message = f"function {self.spec.name} failed to start: {last}"
        raise FunctionFailed(
            502, "function_failed_to_start", message, tuple(startup_logs), self.pid
        )

    async def call(
        self, request: dict[str, Any], body: bytes, sink: list[LogLine]
    ) -> protocol.Result | protocol.HandlerError:
        """Send one invocation and wait for its answer. Raises WorkerGone / ProtocolError."""
        self.sink = sink
        try:
            frame = self.protocol.send_invoke(request, body)
            # If it died, sending fails: reading then tells us how (end of stream).
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._requests.send_all(frame)
            event = await self._next_event()
            if isinstance(event, protocol.Result | protocol.HandlerError):
                return event
            raise WorkerGone()
        finally:
            self.sink = None

    def _failure(self, code: str, message: str) -> FunctionFailed:
        self.protocol.mark_broken()
        self.kill()
        return FunctionFailed(502, code, message, tuple(self.sink or ()), self.pid)

    # -- lifecycle --------------------------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        # Lookup/permission errors: the whole group is already gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group now (timeouts, broken pipes); never reused after."""
        self.protocol.mark_broken()
        self._signal_group(signal.SIGKILL)
        self.stop_requested.set()

    def request_stop(self) -> None:
        """Ask :meth:`supervise` to stop this worker gracefully (SIGTERM, then SIGKILL)."""
        self.stop_requested.set()

    async def _wait_exit(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.process.wait()
            self.returncode = self.process.returncode

    async def supervise(self) -> None:
        """Own the process until it is gone: drain fd 1/2, honour stop requests, reap it.

        Runs in the pool's task group; on cancellation (server stop) it still terminates the
        group (SIGTERM, SIGKILL after KILL_GRACE) under a shield, so no process outlives it.
        """
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._drain_output)
                tasks.start_soon(self._stop_when_requested)
                await self.process.wait()
                # Children may still hold fd 1/2 open: kill the group, then let the drain
                # read what is left in the pipe for a moment.
                self._signal_group(signal.SIGKILL)
                with anyio.move_on_after(0.2):
                    await self._output_done.wait()
                tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self.process.returncode is None:
                    self._signal_group(signal.SIGTERM)
                    await self._wait_exit(KILL_GRACE)
                self._signal_group(signal.SIGKILL)
                await self.process.wait()
                self.returncode = self.process.returncode
                for stream in (self._answers, self._requests, self.process.stdout):
                    if stream is not None:
                        await stream.aclose()
                self.exited.set()

    async def _stop_when_requested(self) -> None:
        await self.stop_requested.wait()
        with anyio.move_on_after(0.1):
            await self._requests.aclose()  # end of input: the worker exits
        self._signal_group(signal.SIGTERM)
        await anyio.sleep(KILL_GRACE)
        self._signal_group(signal.SIGKILL)

    async def _drain_output(self) -> None:
        """Read the fd 1/2 pipe line by line; lines go to the invocation in flight, if any."""
        partial = b""
        stream = self.process.stdout
        assert stream is not None
        try:
            while True:
                try:
                    data = await stream.receive(READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                *lines, partial = (partial + data).split(b"\n")
                for line in lines:
                    self._record(LogLine(time.time(), "output", line.decode("utf-8", "replace")))
                if len(partial) > 16 * 1024:  # no newline in sight: do not buffer forever
                    self._record(LogLine(time.time(), "output", partial.decode("utf-8", "replace")))
                    partial = b""
        finally:
            if partial:
                self._record(LogLine(time.time(), "output", partial.decode("utf-8", "replace")))
            self._output_done.set()
