"""A sandboxed worker lives as long as the gateway, not as long as the thread that forked it.

bubblewrap's --die-with-parent uses the kernel's parent-death signal, which follows the
parent *thread*. anyio.open_process on trio forks from a cached worker thread that trio
retires when idle; the worker then got SIGKILL while serving (fluxgw/runtime/child.py).
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest
import trio

from fluxgw.project import FunctionSpec
from fluxgw.runtime.api import Invocation
from fluxgw.runtime.pool import PoolManager
from fluxgw.runtime.sandbox import Launcher, detect_sandbox

pytestmark = pytest.mark.timeout(60)

SANDBOX = detect_sandbox()


def trio_cache_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("Trio thread")]


@pytest.mark.skipif(not SANDBOX.enabled, reason="needs bubblewrap")
def test_a_sandboxed_worker_outlives_the_thread_that_started_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio._core._thread_cache as thread_cache

    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.2)  # retire idle threads at once
    folder = tmp_path / "pid"
    folder.mkdir()
    (folder / "main.py").write_text(
        textwrap.dedent(
            """
            import os
            def handler(request, ctx):
                return {"pid": os.getpid()}
            """
        )
    )
    spec = FunctionSpec(
        name="pid", runtime="python", route="/pid", method="GET", directory=folder, entry="main.py"
    )

    def invocation() -> Invocation:
        return Invocation(request_id="r", method="GET", path="/pid", deadline=time.time() + 10)

    async def main() -> None:
        pool = PoolManager(grace_period=5, launcher=Launcher(SANDBOX))
        async with anyio.create_task_group() as tasks:
            await tasks.start(pool.run)
            pool.deploy([spec])
            first = await pool.invoke(spec, invocation())
            # Every thread trio had cached (the one that would have forked the worker too)
            # retires after 0.2 s idle; then the worker must still be the same, and serve.
            with anyio.fail_after(10):
                while trio_cache_threads():
                    await anyio.sleep(0.05)
            with anyio.fail_after(10):
                second = await pool.invoke(spec, invocation())
            assert (first.status, second.status) == (200, 200)
            assert second.body == first.body  # the same worker process answered
            assert second.worker_pid == first.worker_pid
            await pool.aclose()

    trio.run(main)
