"""The trace store: buffered writes by a background task, read back by the CLI
(docs/reference.md#request-ids-and-traces)."""

from __future__ import annotations

import os
import stat
import threading
import time

import anyio
import pytest
from conftest import BOTH_LOOPS, wait_until

from fluxgw.runtime.api import LogLine
from fluxgw.tracestore import TraceStore
from fluxgw.tracing import (
    AmbiguousPrefix,
    Span,
    TraceNotFound,
    TracePrefixTooShort,
    TraceRecord,
    new_request_id,
)

pytestmark = BOTH_LOOPS


def make_trace(request_id: str | None = None, started_at: float | None = None, **kw) -> TraceRecord:
    now = time.time() if started_at is None else started_at
    fields = dict(
        request_id=request_id or new_request_id(),
        started_at=now,
        method="POST",
        path="/orders",
        status=200,
        duration_ms=5.0,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        function="orders",
        key_name="ci",
        spans=[Span("gateway", now, 1.0, {"auth": "ok"}), Span("function", now + 0.001, 3.0, {})],
        logs=[LogLine(now + 0.002, "stdout", "hello")],
    )
    fields.update(kw)
    return TraceRecord(**fields)


@pytest.mark.timing
async def test_recorded_trace_is_readable_within_a_second(tmp_path, tasks):
    store = TraceStore(tmp_path / "traces.db")
    await tasks.start(store.run)
    trace = make_trace()
    started = time.monotonic()
    store.record(trace)
    while True:
        try:
            got = await anyio.to_thread.run_sync(store.get, trace.request_id)
            break
        except TraceNotFound:
            await anyio.sleep(0.01)
    assert time.monotonic() - started < 1.0
    assert got == trace
    # the writer marks the batch done on the event loop just after the commit a reader sees
    await wait_until(lambda: store.backlog == 0)
    assert store.dropped == 0


async def test_prefix_lookup(tmp_path, tasks):
    store = TraceStore(tmp_path / "traces.db")
    await tasks.start(store.run)
    a = make_trace("abcdef0000000000000000000000000a", started_at=1000.0)
    b = make_trace("abcdef0000000000000000000000000b", started_at=1001.0)
    c = make_trace("123456ffffffffffffffffffffffffff", started_at=1002.0)
    for t in (a, b, c):
        store.record(t)
    await wait_until(lambda: store.backlog == 0)
    assert store.get("123456").request_id == c.request_id
    assert store.get("123456FFFF").request_id == c.request_id  # case does not matter
    assert store.get("abcdef0000000000000000000000000a").request_id == a.request_id
    with pytest.raises(AmbiguousPrefix) as info:
        store.get("abcdef")
    assert [c[0] for c in info.value.candidates] == [b.request_id, a.request_id]
    assert info.value.candidates[0][1:] == (1001.0, "POST", "/orders", 200)
    with pytest.raises(TracePrefixTooShort):
        store.get("abcde")
    with pytest.raises(ValueError):
        store.get("abc")
    with pytest.raises(TraceNotFound):
        store.get("999999")


def test_reading_without_a_database_creates_nothing(tmp_path):
    store = TraceStore(tmp_path / "none" / "traces.db")
    with pytest.raises(TraceNotFound):
        store.get("abcdef")
    assert store.last(5) == []
    assert not (tmp_path / "none").exists()


async def test_last_is_newest_first(tmp_path, tasks):
    store = TraceStore(tmp_path / "traces.db")
    await tasks.start(store.run)
    traces = [make_trace(started_at=1000.0 + i, status=200 + i) for i in range(10)]
    for t in traces:
        store.record(t)
    await wait_until(lambda: store.backlog == 0)
    last = store.last(3)
    assert [t.request_id for t in last] == [t.request_id for t in reversed(traces[-3:])]
    assert [t.status for t in last] == [209, 208, 207]
    assert len(store.last(100)) == 10


async def test_async_updates_add_spans_and_state(tmp_path, tasks):
    store = TraceStore(tmp_path / "traces.db")
    await tasks.start(store.run)
    trace = make_trace(status=202, async_state="queued")
    # The dispatcher's event may reach the writer before the gateway's record: order is free.
    store.update_async_state(trace.request_id, "running", spans=[Span("queue", 1.0, 2.0, {})])
    store.record(trace)
    store.update_async_state(
        trace.request_id,
        "succeeded",
        spans=[Span("function", 2.0, 3.0, {"status": 200})],
        logs=[LogLine(2.5, "stdout", "async hello")],
    )
    await wait_until(lambda: store.backlog == 0)
    got = store.get(trace.request_id)
    assert got.async_state == "succeeded"
    assert [s.name for s in got.spans] == ["gateway", "function", "queue", "function"]
    assert got.logs[-1].text == "async hello"
    assert store.last(1)[0].async_state == "succeeded"


async def test_retention_by_count_and_age(tmp_path):
    now = [10_000_000.0]
    store = TraceStore(tmp_path / "traces.db", max_traces=5, max_age_s=100.0, clock=lambda: now[0])
    async with anyio.create_task_group() as tasks:
        await tasks.start(store.run)
        for i in range(8):
            store.record(make_trace(started_at=now[0] - 50 + i))
        store.record(make_trace(started_at=now[0] - 500))  # too old
        await wait_until(lambda: store.backlog == 0)
        await anyio.to_thread.run_sync(store.apply_retention, now[0])
        kept = store.last(100)
        assert [t.started_at for t in kept] == [now[0] - 50 + i for i in (7, 6, 5, 4, 3)]
        # 56 s later only the two newest (T-43, T-44) are younger than max_age_s.
        await anyio.to_thread.run_sync(store.apply_retention, now[0] + 56)
        assert [t.started_at for t in store.last(100)] == [now[0] - 43, now[0] - 44]
        tasks.cancel_scope.cancel()


async def test_retention_runs_in_the_writer(tmp_path, tasks, monkeypatch):
    monkeypatch.setattr("fluxgw.tracestore.RETENTION_EVERY", 2)
    store = TraceStore(tmp_path / "traces.db", max_traces=3, flush_interval=0.01)
    await tasks.start(store.run)
    now = time.time()
    traces = [make_trace(started_at=now + i / 1000) for i in range(10)]
    for trace in traces:
        store.record(trace)
    await wait_until(lambda: len(store.last(100)) == 3)
    assert [t.request_id for t in store.last(100)] == [t.request_id for t in traces[:-4:-1]]


async def test_cancellation_flushes_what_is_pending(tmp_path):
    store = TraceStore(tmp_path / "traces.db", flush_interval=60.0)  # never on its own
    async with anyio.create_task_group() as tasks:
        await tasks.start(store.run)
        traces = [make_trace() for _ in range(1200)]
        for t in traces:
            store.record(t)
        tasks.cancel_scope.cancel()
    assert store.backlog == 0
    assert len(store.last(5000)) == 1200
    assert store.get(traces[-1].request_id) == traces[-1]


async def test_every_trace_of_a_large_batch_reads_back_as_recorded(tmp_path):
    """One flush of 1,001 traces (statements of every size the writer uses: 15 x 64 rows,
    2 x 16, 2 x 4, 1): each trace, its empty and filled optional fields, spans and logs,
    comes back unchanged."""
    store = TraceStore(tmp_path / "traces.db", flush_interval=60.0, batch_size=1001)
    traces = [
        make_trace(
            started_at=1000.0 + i,
            status=200 + i % 300,
            client_request_id=f"client-{i}" if i % 3 else None,
            async_state="queued" if i % 7 == 0 else None,
            logs=[LogLine(1000.0 + i, "stderr", f"línea {i} ✓")] if i % 2 else [],
        )
        for i in range(1001)
    ]
    async with anyio.create_task_group() as tasks:
        await tasks.start(store.run)
        for t in traces:
            store.record(t)
        await store.flush()
        tasks.cancel_scope.cancel()
    assert store.dropped == 0
    assert [store.get(t.request_id) for t in traces] == traces


async def test_database_is_private(tmp_path, tasks):
    store = TraceStore(tmp_path / "state" / "traces.db")
    await tasks.start(store.run)
    store.record(make_trace())
    await wait_until(lambda: store.backlog == 0)
    for path in (tmp_path / "state").iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


async def test_reader_runs_while_the_gateway_writes(tmp_path, tasks):
    store = TraceStore(tmp_path / "traces.db", flush_interval=0.005, batch_size=50)
    await tasks.start(store.run)
    first = make_trace()
    store.record(first)
    await wait_until(lambda: store.backlog == 0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> int:
        reads = 0
        try:
            while not stop.is_set():
                assert store.get(first.request_id).request_id == first.request_id
                store.last(20)
                reads += 1
        except BaseException as exc:
            errors.append(exc)
        return reads

    async def writer() -> None:
        for _ in range(40):
            for _ in range(50):
                store.record(make_trace())
            await anyio.sleep(0.005)
        await wait_until(lambda: store.backlog == 0)
        stop.set()

    async with anyio.create_task_group() as inner:
        inner.start_soon(writer)
        reads = await anyio.to_thread.run_sync(reader)
    assert not errors and reads > 0
    assert len(store.last(10_000)) == 2001


async def test_bounded_buffer_drops_oldest(tmp_path):
    store = TraceStore(tmp_path / "traces.db", max_pending=10)
    traces = [make_trace() for _ in range(15)]
    for t in traces:
        store.record(t)
    assert store.backlog == 10 and store.dropped == 5
    async with anyio.create_task_group() as tasks:
        await tasks.start(store.run)
        tasks.cancel_scope.cancel()
    assert {t.request_id for t in store.last(100)} == {t.request_id for t in traces[5:]}


async def test_disabled_store_records_nothing(tmp_path):
    store = TraceStore(tmp_path / "traces.db", enabled=False)
    async with anyio.create_task_group() as tasks:
        await tasks.start(store.run)
        store.record(make_trace())
        store.update_async_state("x" * 32, "running")
        assert store.backlog == 0
        tasks.cancel_scope.cancel()
    assert store.last(10) == []
    assert not (tmp_path / "traces.db").exists()


def store_size(db) -> int:
    return sum(
        os.path.getsize(f"{db}{suffix}")
        for suffix in ("", "-wal")
        if os.path.exists(f"{db}{suffix}")
    )


async def test_retention_by_size_keeps_the_file_under_the_cap(tmp_path):
    """traces.db is bounded by size too, and the space is given back (docs/limits.md)."""
    db = tmp_path / "traces.db"
    cap = 2 * 1024 * 1024
    store = TraceStore(db, max_bytes=cap, max_traces=1_000_000)
    big_logs = [LogLine(1.0, "stdout", "x" * 1000) for _ in range(50)]  # ~50 KB per trace
    async with anyio.create_task_group() as tasks:
        await tasks.start(store.run)
        base = time.time()
        traces = [make_trace(started_at=base + i, logs=big_logs) for i in range(200)]  # ~10 MB
        for trace in traces:
            store.record(trace)
        await wait_until(lambda: store.backlog == 0)
        assert store_size(db) > 4 * cap  # over the cap before retention runs
        await anyio.to_thread.run_sync(store.apply_retention, base + 200)
        assert store_size(db) <= cap, store_size(db)
        kept = store.last(1000)
        assert kept and kept[0].request_id == traces[-1].request_id  # the newest stay
        assert len(kept) < len(traces)
        tasks.cancel_scope.cancel()
