"""The durable queue for async invocations (docs/reference.md#async-functions): durability,
retries, crash recovery."""

from __future__ import annotations

import base64
import json
import os
import random
import sqlite3
import stat

import anyio
import pytest
from conftest import BOTH_LOOPS, wait_until

from fluxgw.jobs import Job, QueueEvent, job_to_json
from fluxgw.jobstate import Backoff
from fluxgw.queue import JobQueue, UnknownFunction
from fluxgw.runtime.api import FunctionFailed, Invocation, InvocationResult, LogLine
from fluxgw.tracestore import TraceStore
from fluxgw.tracing import TraceRecord, new_request_id

pytestmark = BOTH_LOOPS


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_invocation(body: bytes = b'{"n": 1}', request_id: str | None = None) -> Invocation:
    return Invocation(
        request_id=request_id or new_request_id(),
        method="POST",
        path="/jobs",
        deadline=123.0,
        query=(("a", "1"), ("a", "2")),
        headers=(("content-type", "application/json"), ("x-thing", "y")),
        body=body,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        url="http://127.0.0.1:4000/jobs?a=1&a=2",
    )


def ok(status: int = 200, body: bytes = b'{"ok": true}') -> InvocationResult:
    return InvocationResult(status, (("content-type", "application/json"),), body)


async def wait_for(queue: JobQueue, request_id: str, predicate, timeout: float = 5.0) -> Job:
    with anyio.fail_after(timeout):
        while True:
            job = queue.get(request_id)
            if job is not None and predicate(job):
                return job
            await anyio.sleep(0.005)


def make_queue(path, **kw) -> JobQueue:
    kw.setdefault("poll_interval", 0.01)
    kw.setdefault("rng", random.Random(7))
    return JobQueue(path, **kw)


async def test_enqueue_is_durable(tmp_path):
    path = tmp_path / "queue.db"
    invocation = make_invocation(body=bytes(range(256)))
    queue = make_queue(path, clock=FakeClock())
    await queue.enqueue(invocation, "jobs")
    assert queue.depth() == 1
    queue.close()
    # A new instance (a restarted gateway) on the same file sees the job, byte for byte.
    again = make_queue(path)
    job = again.get(invocation.request_id)
    assert job is not None and job.invocation == invocation
    assert (job.state, job.attempts, job.max_attempts, job.function) == ("queued", 0, 3, "jobs")
    assert again.depth() == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_success_lifecycle(tmp_path, tasks):
    clock = FakeClock()
    queue = make_queue(tmp_path / "queue.db", clock=clock)
    events: list[tuple[str, str, int]] = []
    seen_running = anyio.Event()
    release = anyio.Event()
    calls: list[tuple[str, Invocation]] = []

    async def invoke(function: str, invocation: Invocation) -> InvocationResult:
        calls.append((function, invocation))
        seen_running.set()
        await release.wait()
        return ok(201)

    def on_event(event: QueueEvent) -> None:
        events.append((event.kind, event.job.state, event.attempt))

    await tasks.start(
        lambda task_status: queue.run_dispatcher(invoke, on_event=on_event, task_status=task_status)
    )
    invocation = make_invocation()
    await queue.enqueue(invocation, "jobs")
    assert queue.get(invocation.request_id).state in ("queued", "running")
    with anyio.fail_after(2):
        await seen_running.wait()
    running = queue.get(invocation.request_id)
    assert (running.state, running.attempts) == ("running", 1)
    release.set()
    # The event follows the commit: once it is told, the job is stored as succeeded.
    await wait_until(lambda: len(events) == 2)
    done = queue.get(invocation.request_id)
    assert done.state == "succeeded"
    assert calls == [("jobs", invocation)]
    assert (done.result_status, done.result_body, done.error) == (201, b'{"ok": true}', None)
    assert done.result_headers == (("content-type", "application/json"),)
    assert events == [("running", "running", 1), ("succeeded", "succeeded", 1)]
    assert queue.depth() == 0


async def test_enqueue_wakes_the_dispatcher_promptly(tmp_path, tasks):
    queue = make_queue(tmp_path / "queue.db", poll_interval=30.0)  # only a wake-up can help
    started = anyio.Event()

    async def invoke(function, invocation):
        started.set()
        return ok()

    await tasks.start(queue.run_dispatcher, invoke)
    await queue.enqueue(make_invocation(), "jobs")
    with anyio.fail_after(1):
        await started.wait()


async def test_retries_with_backoff_then_fails(tmp_path, tasks):
    clock = FakeClock()
    queue = make_queue(tmp_path / "queue.db", clock=clock, backoff_base=2.0, backoff_max=60.0)
    attempts: list[float] = []

    async def invoke(function, invocation):
        if function == "other":
            return ok()
        attempts.append(clock.now)
        raise FunctionFailed(502, "runtime_crashed", "worker exited with code 1")

    events: list[tuple[str, str]] = []
    await tasks.start(
        lambda task_status: queue.run_dispatcher(
            invoke,
            on_event=lambda event: events.append((event.kind, event.job.request_id)),
            task_status=task_status,
        )
    )
    invocation = make_invocation()
    rid = invocation.request_id
    await queue.enqueue(invocation, "jobs")

    first = await wait_for(queue, rid, lambda j: j.attempts == 1 and j.state == "queued")
    delay = first.next_run_at - clock.now
    assert 1.0 <= delay <= 2.0  # base 2 s, jitter scales it into [0.5, 1] x
    assert "worker exited" in first.error
    # Not due yet (the fake clock has not moved): another job's enqueue wakes the dispatcher,
    # and once that job has been claimed, the retry was looked at and left waiting.
    other = make_invocation()
    await queue.enqueue(other, "other")
    await wait_for(queue, other.request_id, lambda j: j.state == "succeeded")
    assert len(attempts) == 1  # no early retry
    assert queue.get(rid).attempts == 1
    clock.now = first.next_run_at

    second = await wait_for(queue, rid, lambda j: j.attempts == 2 and j.state == "queued")
    delay = second.next_run_at - clock.now
    assert 2.0 <= delay <= 4.0  # doubled
    clock.now = second.next_run_at

    await wait_until(lambda: ("failed", rid) in events)
    failed = queue.get(rid)
    assert failed.state == "failed" and failed.attempts == 3
    assert failed.error == "runtime_crashed: worker exited with code 1 (gave up after 3 attempts)"
    ours = [kind for kind, job in events if job == rid]
    assert ours == ["running", "retry", "running", "retry", "running", "failed"]
    assert queue.depth() == 0
    assert job_to_json(failed)["status"] == "failed"


def test_backoff_is_capped():
    rng = random.Random(1)
    delays = [Backoff(1.0, 60.0).delay(n, rng.random()) for n in range(1, 200)]
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert max(delays[10:]) <= 60.0 and min(delays[10:]) >= 30.0


async def test_timeout_504_is_retried_and_can_succeed(tmp_path, tasks):
    clock = FakeClock()
    queue = make_queue(tmp_path / "queue.db", clock=clock, backoff_base=0.0)
    results = [FunctionFailed(504, "timeout", "ran past 30 s"), ok()]

    async def invoke(function, invocation):
        outcome = results.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    await tasks.start(queue.run_dispatcher, invoke)
    invocation = make_invocation()
    await queue.enqueue(invocation, "jobs")
    done = await wait_for(queue, invocation.request_id, lambda j: j.state == "succeeded")
    assert done.attempts == 2 and done.error is None


async def test_unknown_function_fails_at_once(tmp_path, tasks):
    queue = make_queue(tmp_path / "queue.db")

    async def invoke(function, invocation):
        raise UnknownFunction(function)

    await tasks.start(queue.run_dispatcher, invoke)
    invocation = make_invocation()
    await queue.enqueue(invocation, "gone")
    failed = await wait_for(queue, invocation.request_id, lambda j: j.state == "failed")
    assert failed.attempts == 1
    assert failed.error == "function 'gone' is no longer deployed"


async def test_a_bug_in_invoke_does_not_stop_the_dispatcher(tmp_path, tasks):
    queue = make_queue(tmp_path / "queue.db", backoff_base=0.0, max_attempts=1)

    async def invoke(function, invocation):
        if function == "buggy":
            raise RuntimeError("boom")
        return ok()

    await tasks.start(queue.run_dispatcher, invoke)
    bad, good = make_invocation(), make_invocation()
    await queue.enqueue(bad, "buggy")
    await queue.enqueue(good, "jobs")
    assert "boom" in (await wait_for(queue, bad.request_id, lambda j: j.state == "failed")).error
    await wait_for(queue, good.request_id, lambda j: j.state == "succeeded")


async def test_running_jobs_left_by_a_crash_are_requeued(tmp_path):
    path = tmp_path / "queue.db"
    crashed = make_queue(path)
    invocation = make_invocation()
    await crashed.enqueue(invocation, "jobs")
    # What a gateway killed mid-invocation leaves behind.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE jobs SET state = 'running', attempts = 1")
    conn.close()
    crashed.close()

    queue = make_queue(path)
    calls = []

    async def invoke(function, inv):
        calls.append(inv.request_id)
        return ok()

    async with anyio.create_task_group() as tasks:
        await tasks.start(queue.run_dispatcher, invoke)
        done = await wait_for(queue, invocation.request_id, lambda j: j.state == "succeeded")
        tasks.cancel_scope.cancel()
    assert calls == [invocation.request_id]
    assert done.attempts == 1  # the interrupted attempt is not counted


async def test_no_job_lost_when_the_dispatcher_is_killed_midway(tmp_path):
    path = tmp_path / "queue.db"
    first = make_queue(path)
    invocations = [make_invocation() for _ in range(20)]
    for invocation in invocations:
        await first.enqueue(invocation, "jobs")
    calls: list[str] = []

    async def slow(function, invocation):
        calls.append(invocation.request_id)
        await anyio.sleep(0.02)
        return ok()

    async with anyio.create_task_group() as tasks:
        await tasks.start(
            lambda task_status: first.run_dispatcher(slow, concurrency=4, task_status=task_status)
        )
        with anyio.fail_after(5):
            while sum(first.get(i.request_id).state == "succeeded" for i in invocations) < 5:
                await anyio.sleep(0.005)
        tasks.cancel_scope.cancel()
    states = [first.get(i.request_id).state for i in invocations]
    assert states.count("succeeded") < 20 and "running" not in states  # put back on the way out
    first.close()

    second = make_queue(path)
    async with anyio.create_task_group() as tasks:
        await tasks.start(
            lambda task_status: second.run_dispatcher(slow, concurrency=4, task_status=task_status)
        )
        for invocation in invocations:
            await wait_for(second, invocation.request_id, lambda j: j.state == "succeeded")
        tasks.cancel_scope.cancel()
    assert set(calls) == {i.request_id for i in invocations}  # each ran at least once
    assert second.depth() == 0


async def test_concurrency_is_bounded(tmp_path, tasks):
    queue = make_queue(tmp_path / "queue.db")
    running = 0
    peak = 0

    async def invoke(function, invocation):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1
        return ok()

    await tasks.start(
        lambda task_status: queue.run_dispatcher(invoke, concurrency=3, task_status=task_status)
    )
    invocations = [make_invocation() for _ in range(12)]
    for invocation in invocations:
        await queue.enqueue(invocation, "jobs")
    for invocation in invocations:
        await wait_for(queue, invocation.request_id, lambda j: j.state == "succeeded")
    assert peak == 3


def _job(**changes) -> Job:
    fields = dict(
        request_id="r" * 32,
        function="jobs",
        invocation=make_invocation(),
        attempts=1,
        max_attempts=3,
        state="succeeded",
        next_run_at=1.0,
        result_status=200,
        result_headers=(
            ("content-type", "application/json; charset=utf-8"),
            ("vary", "a"),
            ("vary", "b"),
        ),
        result_body=b'{"total": 3}',
        error=None,
        created_at=1.0,
        updated_at=2.0,
    )
    fields.update(changes)
    return Job(**fields)


def test_job_to_json_shapes():
    data = job_to_json(_job())
    assert data == {
        "request_id": "r" * 32,
        "function": "jobs",
        "status": "succeeded",
        "attempts": 1,
        "max_attempts": 3,
        "created_at": 1.0,
        "updated_at": 2.0,
        "result": {
            "status": 200,
            "headers": {"content-type": "application/json; charset=utf-8", "vary": "a, b"},
            "body": {"total": 3},
        },
        "error": None,
    }
    json.dumps(data)
    text = job_to_json(_job(result_headers=(("content-type", "text/plain"),), result_body=b"hi"))
    assert text["result"]["body"] == "hi" and "body_encoding" not in text["result"]
    binary = job_to_json(_job(result_headers=(), result_body=b"\xff\x00"))
    assert binary["result"]["body_encoding"] == "base64"
    assert base64.b64decode(binary["result"]["body"]) == b"\xff\x00"
    queued = job_to_json(
        _job(state="queued", result_status=None, result_headers=None, result_body=None, error="x")
    )
    assert queued["result"] is None and queued["next_attempt_at"] == 1.0 and queued["error"] == "x"


async def test_queue_events_fill_the_trace(tmp_path, tasks):
    """Wired as the gateway does: on_event -> TraceStore.record_queue_event(event)."""
    store = TraceStore(tmp_path / "traces.db", flush_interval=0.01)
    await tasks.start(store.run)
    queue = make_queue(tmp_path / "queue.db", backoff_base=0.0)
    crash_log = (LogLine(5.0, "stderr", "Traceback ..."),)
    answer = InvocationResult(
        200, (), b"ok", logs=(LogLine(6.0, "stdout", "done"),), worker_pid=42, run_ms=3.0
    )
    results = [FunctionFailed(502, "runtime_crashed", "crashed", logs=crash_log), answer]

    async def invoke(function, invocation):
        outcome = results.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def on_event(event):
        store.record_queue_event(event)

    await tasks.start(
        lambda task_status: queue.run_dispatcher(invoke, on_event=on_event, task_status=task_status)
    )
    invocation = make_invocation()
    accepted = TraceRecord(
        invocation.request_id, 1.0, "POST", "/jobs", 202, 1.0, "t" * 32, async_state="queued"
    )
    store.record(accepted)
    await queue.enqueue(invocation, "jobs")
    await wait_for(queue, invocation.request_id, lambda j: j.state == "succeeded")
    with anyio.fail_after(2):
        while store.backlog or store.get(invocation.request_id).async_state != "succeeded":
            await anyio.sleep(0.01)
    trace = store.get(invocation.request_id)
    names = [span.name for span in trace.spans]
    assert names == ["queue", "queue", "function", "queue", "runtime", "function"]
    wait, retry, crashed, _, runtime, function = trace.spans
    assert wait.attributes == {"attempt": 1, "max_attempts": 3}
    assert retry.attributes["outcome"] == "retry" and retry.attributes["attempt"] == 1
    assert "crashed" in retry.attributes["error"] and "retry_in_s" in retry.attributes
    assert crashed.attributes["status"] == 502 and crashed.attributes["error"] == "runtime_crashed"
    assert runtime.attributes["worker_pid"] == 42 and runtime.attributes["start"] == "warm"
    assert function.attributes == {"status": 200, "function": "jobs"}
    assert function.duration_ms == 3.0
    assert [line.text for line in trace.logs] == ["Traceback ...", "done"]


async def test_finished_jobs_are_pruned_after_keep_finished_s(tmp_path, tasks):
    clock = FakeClock()
    queue = make_queue(tmp_path / "queue.db", clock=clock, keep_finished_s=3600.0)

    async def invoke(function, invocation):
        return ok()

    await tasks.start(queue.run_dispatcher, invoke)
    done, waiting = make_invocation(), make_invocation()
    await queue.enqueue(done, "jobs")
    await wait_for(queue, done.request_id, lambda j: j.state == "succeeded")
    clock.now += 3601
    await queue.enqueue(waiting, "jobs")  # newer: kept
    await wait_for(queue, waiting.request_id, lambda j: j.state == "succeeded")
    assert await anyio.to_thread.run_sync(queue.prune, clock.now) == 1
    assert queue.get(done.request_id) is None and queue.get(waiting.request_id) is not None


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_must_be_positive(tmp_path, max_attempts):
    with pytest.raises(ValueError):
        JobQueue(tmp_path / "q.db", max_attempts=max_attempts)
