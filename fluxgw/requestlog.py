"""The request log of `flux dev` and `flux serve --log-requests`: feed items to stdout.

One task subscribes to the gateway's live feed and writes what it reads, rendered by
:mod:`fluxgw.logline`. Writing happens in a worker thread, a batch at a time: a terminal or
pipe that is slow (or not read at all) only makes this task fall behind, and the feed then
drops the oldest lines for it (announced with a count), while requests go on at full speed.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

import anyio
import anyio.abc

from .feed import FeedItem, RequestFeed
from .logline import Style, render_all, use_color

BUFFER = 2000  # items waiting to be written before the oldest are dropped
BATCH = 500  # items rendered into one write


async def print_requests(
    feed: RequestFeed,
    *,
    log_format: str = "text",  # or "json"
    out: TextIO | None = None,
    color: bool | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Write every feed item to ``out`` (stdout) until cancelled."""
    stream_out = out if out is not None else sys.stdout
    if color is None:
        color = log_format == "text" and use_color(stream_out, os.environ)
    style = Style(color=color)
    as_json = log_format == "json"
    async with feed.subscribe(max_buffer=BUFFER) as stream:
        task_status.started()
        async for item in stream:
            batch: list[FeedItem] = [item]
            while len(batch) < BATCH:
                try:
                    batch.append(stream.receive_nowait())
                except anyio.WouldBlock:
                    break
            text = render_all(batch, style, as_json=as_json)
            # Abandoned on cancel: a stop must not wait on a terminal nobody reads.
            await anyio.to_thread.run_sync(_write, stream_out, text, abandon_on_cancel=True)


def _write(out: TextIO, text: str) -> None:
    try:
        out.write(text)
        out.flush()
    except (BrokenPipeError, ValueError):  # the reader went away, or stdout was closed
        pass
