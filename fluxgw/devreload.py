"""`flux dev`: watch functions/ and redeploy on every saved change.

watchfiles runs its Rust watcher in a thread (through anyio: trio and asyncio alike) and checks
the shutdown event every ``step`` ms, so Ctrl-C stops it within 0.5 s. A change that does not
validate prints its one-line error and the last good deployment stays live.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.abc
import watchfiles

from .console import error, say
from .deploy import deploy
from .errors import FluxError
from .gateway import Gateway
from .state import StateDir

log = logging.getLogger("fluxgw.dev")
STEP_MS = 30  # how long the tree must be quiet before a batch of changes is reported
DEBOUNCE_MS = 300  # at most this long grouping a burst of changes (an editor's save dance)


def _relevant(change: watchfiles.Change, path: str) -> bool:
    # functions/.env is no code: the gateway's reload loop picks it up without a redeploy.
    return watchfiles.DefaultFilter()(change, path) and not path.endswith((".pyc", "~", "/.env"))


async def watch_and_redeploy(state: StateDir, gateway: Gateway, shutdown: anyio.Event) -> None:
    functions = state.project_dir / "functions"
    async for changes in watchfiles.awatch(
        functions,
        watch_filter=_relevant,
        debounce=DEBOUNCE_MS,
        step=STEP_MS,
        stop_event=shutdown,
        recursive=True,
    ):
        started = time.perf_counter()
        try:
            deployment = await anyio.to_thread.run_sync(
                lambda: deploy(state, dotenv=gateway.options.dotenv)
            )
        except FluxError as exc:
            error(f"change not deployed, still serving the last good version: {exc.message}")
            continue
        await gateway.reload_now()
        took = (time.perf_counter() - started) * 1000
        names = sorted({p.split("/functions/", 1)[-1].split("/", 1)[0] for _, p in changes})
        say(f"redeployed version {deployment.version} ({', '.join(names)}) in {took:.0f} ms")
