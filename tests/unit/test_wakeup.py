"""The pool's hand-off primitive (fluxgw/runtime/wakeup.py) behaves the same on both loops: a
notify wakes the waiter (or the next one to wait), a deadline ends the wait, and a cancel from
outside ends it like any other await."""

from __future__ import annotations

import anyio
import pytest
from conftest import BOTH_LOOPS

from fluxgw.runtime.wakeup import Waiting

pytestmark = BOTH_LOOPS


async def test_a_notify_wakes_the_task_waiting() -> None:
    waiting = Waiting()
    wakeup = waiting.wakeup()
    woken: list[bool] = []

    async def waiter() -> None:
        woken.append(await wakeup.wait(waiting.now() + 10))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert woken == []  # waiting, not done
        wakeup.notify()
    assert woken == [True]


async def test_a_notify_before_the_wait_is_kept_for_it() -> None:
    waiting = Waiting()
    wakeup = waiting.wakeup()
    wakeup.notify()
    with anyio.fail_after(1):
        assert await wakeup.wait(waiting.now() + 10) is True
    # Used up: the next wait waits again.
    assert await wakeup.wait(waiting.now() + 0.01) is False


async def test_the_deadline_ends_the_wait() -> None:
    waiting = Waiting()
    wakeup = waiting.wakeup()
    began = waiting.now()
    assert await wakeup.wait(began + 0.05) is False
    assert waiting.now() - began >= 0.05
    assert await wakeup.wait(began) is False  # already past: returns at once


async def test_a_cancelled_wait_leaves_the_wakeup_usable() -> None:
    waiting = Waiting()
    wakeup = waiting.wakeup()
    with anyio.move_on_after(0.05) as scope:
        await wakeup.wait(waiting.now() + 10)
    assert scope.cancelled_caught
    wakeup.notify()
    assert await wakeup.wait(waiting.now() + 10) is True


async def test_the_clock_is_the_event_loop_clock() -> None:
    waiting = Waiting()
    assert waiting.now() == pytest.approx(anyio.current_time(), abs=0.01)
