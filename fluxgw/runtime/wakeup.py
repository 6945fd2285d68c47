"""One task waiting, with a deadline, for another to wake it: the pool's hand-offs.

Every warm call waits twice on the request path: for a free worker slot (at c=32 on two sync
python workers nearly every call queues) and for its answer from the worker's reader task. With
``anyio.Event`` and a ``move_on_at`` cancel scope, one such hand-off costs ~28 us on asyncio
against ~4.5 us for a bare future and a loop timer (BENCHMARKS.md, "Both event loops"): anyio
finds the backend on each Event, and its asyncio cancel scope does per-task bookkeeping on
entry and exit. anyio has no cheaper primitive, so on asyncio this uses the loop's own; on trio
anyio's Event and scope are thin wrappers over trio's and cost about what trio's do.

Cancellation from outside (a client that left, shutdown) works as for any await: on asyncio
anyio cancels the task, which cancels the future it waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import anyio
import sniffio


class Wakeup(Protocol):
    def notify(self) -> None:
        """Wake the waiting task, or the next one to wait if none is waiting now."""

    async def wait(self, deadline: float) -> bool:
        """Until notified (``True``) or ``deadline`` on the event loop's clock (``False``)."""


class _AnyioWakeup:
    __slots__ = ("_event", "_pending")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._pending = False

    def notify(self) -> None:
        self._pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self, deadline: float) -> bool:
        if not self._pending:
            self._event = anyio.Event()
            try:
                with anyio.move_on_at(deadline):
                    await self._event.wait()
            finally:
                self._event = None
        woken, self._pending = self._pending, False
        return woken


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _AsyncioWakeup:
    __slots__ = ("_future", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._pending = False

    def notify(self) -> None:
        self._pending = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, deadline: float) -> bool:
        if not self._pending:
            future = self._future = self._loop.create_future()
            timer = self._loop.call_at(deadline, _expire, future)
            try:
                await future
            finally:
                timer.cancel()
                self._future = None
        woken, self._pending = self._pending, False
        return woken


class Waiting:
    """The running event loop's :class:`Wakeup` maker and clock, looked up once (each anyio
    call finds the backend again: ~2 us for ``anyio.current_time()`` on asyncio)."""

    def __init__(self) -> None:
        self.wakeup: Callable[[], Wakeup]
        self.now: Callable[[], float]
        if sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
            self.wakeup = lambda: _AsyncioWakeup(loop)
            self.now = loop.time  # what anyio.current_time() reads on asyncio
        else:
            self.wakeup = _AnyioWakeup
            self.now = anyio.current_time
