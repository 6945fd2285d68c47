"""`flux serve` tunes the garbage collector for throughput and collects cycles on a timer, so a
long-running gateway's memory stays flat (the 10-minute soak in BENCHMARKS.md)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import anyio
import pytest
from conftest import BOTH_LOOPS, wait_until

from fluxgw.server import collect_garbage_periodically

pytestmark = BOTH_LOOPS


class Node:
    """An object in a reference cycle: only the cycle collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def served_thresholds() -> Iterator[None]:
    """The thresholds `flux serve` sets (server.tune_garbage_collector), without its freeze."""
    old = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    yield
    gc.set_threshold(*old)


def cycle() -> weakref.ref[Node]:
    node = Node()
    gc.collect()  # gen 0 empty: only the timer below can free the cycle
    return weakref.ref(node)


async def test_a_reference_cycle_is_freed_within_the_collection_interval(
    served_thresholds: None,
) -> None:
    freed = cycle()
    assert freed() is not None  # nothing collects it on its own at these thresholds
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(collect_garbage_periodically, 0.05)
        await wait_until(lambda: freed() is None, timeout=2)
        tasks.cancel_scope.cancel()
