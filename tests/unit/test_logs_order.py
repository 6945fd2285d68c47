"""`flux logs` from the trace store: an async job's lines come after its request's line."""

from __future__ import annotations

from pathlib import Path

import anyio

from fluxgw.logline import JobEvent, RequestEvent
from fluxgw.logs import Filter, LogReader
from fluxgw.tracestore import TraceStore, connect
from fluxgw.tracing import Span, TraceRecord


def test_a_job_that_starts_before_its_202_went_out_is_listed_after_it(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    store = TraceStore(tmp_path / "traces.db", clock=lambda: now[0])

    async def write() -> None:
        store._conn = await anyio.to_thread.run_sync(lambda: connect(store.db_path, create=True))
        # The request started at t, its answer was complete at t + 50 ms ...
        store.record(
            TraceRecord(
                request_id="a" * 32,
                started_at=now[0],
                method="POST",
                path="/later",
                status=202,
                duration_ms=50.0,
                function="later",
                trace_id="b" * 32,
                async_state="queued",
                spans=[Span("gateway", now[0], 50.0, {})],
            )
        )
        # ... but the dispatcher, woken by the enqueue, started the job at t + 20 ms.
        now[0] += 0.020
        queue = Span("queue", now[0], 1.0, {"attempt": 1, "max_attempts": 3})
        store.update_async_state("a" * 32, "running", spans=[queue])
        await store.flush()

    anyio.run(write)
    conn = connect(store.db_path, create=False)
    assert conn is not None
    items = LogReader(conn, Filter()).recent(None)
    assert [type(item) for item in items] == [RequestEvent, JobEvent]
    assert isinstance(items[1], JobEvent) and items[1].event == "running"
