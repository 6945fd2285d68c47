"""A worker's process, started from the event loop's own thread (docs/sandbox.md).

Why not ``anyio.open_process``: on trio it forks from a worker thread of trio's thread cache,
and the kernel's parent-death signal (``PR_SET_PDEATHSIG``, which bubblewrap's
``--die-with-parent`` sets so no worker outlives a killed gateway) fires when that *thread*
exits, not the process: trio retires an idle cached thread after a few seconds, and the worker
it started got SIGKILL in the middle of serving (a 10-minute soak saw 13 such 502s). Forking
from the loop's thread, which lives as long as the gateway, ties the signal to the gateway.
``subprocess`` uses vfork here, so the loop is held for well under a millisecond per spawn.

Exit is awaited through a pidfd (Linux 5.3+): readable once the process has exited, on any
anyio backend; each waiter has its own descriptor, so several tasks can wait at once.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

import anyio


class ChildProcess:
    """The parts of a process the worker code uses: ``pid``, ``returncode``, ``wait()``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        stdout: int,
        stderr: int,
        pass_fds: Sequence[int],
        cwd: str,
        env: Mapping[str, str],
    ) -> ChildProcess:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # its own process group: killpg reaches grandchildren
            cwd=cwd,
            env=dict(env),
        )
        return cls(popen)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Its exit status (negative: the signal that killed it), once it has exited."""
        while self._popen.poll() is None:
            # Nothing reaps it but poll() above, in this thread: the pid is still ours here.
            pidfd = os.pidfd_open(self.pid)
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        return self._popen.returncode
