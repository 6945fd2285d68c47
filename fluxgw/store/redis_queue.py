"""The async-job queue of the Redis store: the files queue's behaviour across instances.

Same contract as :class:`fluxgw.queue.JobQueue` (docs/traces-and-async.md): ``enqueue``
returns only once the job is stored (here: in Redis, so the ``202`` means any instance can run
it), at least once delivery, 502/504 retried with the same backoff, then ``failed``; the same
``on_event`` notifications feed the traces. What Redis adds (docs/redis.md):

- a job runs on whichever instance reads it first from the stream (consumer group);
- an instance refreshes its running entries every :data:`KEEP_ALIVE` seconds; one that stops
  refreshing (killed, frozen, cut off) has its jobs taken over by another instance once they
  have been idle :data:`TAKEOVER_AFTER` seconds, within 30 s in all;
- an attempt interrupted that way, or by a clean stop, does not count against the attempts;
- ``GET /_flux/invocations/ID`` reads the job record from Redis, so any instance answers.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from ..jobs import Job, QueueEvent, attempt_event
from ..jobstate import RETRY_STATUSES, Backoff, Failed, Interrupted, Started, Succeeded, advance
from ..queue import Invoke, OnEvent, QueueUnavailable, UnknownFunction, _safe
from ..runtime.api import FunctionFailed, Invocation, InvocationResult
from .redis_jobs import RedisJobs

log = logging.getLogger("fluxgw.store")

KEEP_ALIVE = 5.0  # s between refreshes of this instance's running entries
TAKEOVER_AFTER = 20.0  # s idle before another instance takes an entry over
FINISHED_TTL_MS = 7 * 86_400 * 1000  # results stay readable this long, like traces
BLOCK_MS = 200  # a stream read waits this long for new jobs (under the socket timeout)


def job_to_record(job: Job) -> dict[str, Any]:
    fields = attrs.asdict(job, recurse=False)
    invocation = attrs.asdict(job.invocation, recurse=False)
    invocation["body"] = base64.b64encode(job.invocation.body).decode()
    fields["invocation"] = invocation
    if job.result_body is not None:
        fields["result_body"] = base64.b64encode(job.result_body).decode()
    return fields


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def job_from_record(data: dict[str, Any]) -> Job:
    invocation = dict(data["invocation"])
    invocation["body"] = base64.b64decode(invocation["body"])
    known = {f.name for f in attrs.fields(Invocation)}
    fields = {k: _tuples(v) for k, v in invocation.items() if k in known}
    result_body = data.get("result_body")
    return Job(
        request_id=data["request_id"],
        function=data["function"],
        invocation=Invocation(**fields),
        attempts=int(data["attempts"]),
        max_attempts=int(data["max_attempts"]),
        state=data["state"],
        next_run_at=float(data["next_run_at"]),
        result_status=data.get("result_status"),
        result_headers=_tuples(data["result_headers"]) if data.get("result_headers") else None,
        result_body=base64.b64decode(result_body) if result_body is not None else None,
        error=data.get("error"),
        created_at=float(data["created_at"]),
        updated_at=float(data["updated_at"]),
    )


class RedisJobQueue:
    """Async invocations in Redis Streams, and this instance's dispatcher."""

    def __init__(
        self,
        jobs: RedisJobs,
        consumer: str,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
    ) -> None:
        self.jobs = jobs
        self.consumer = consumer
        self._clock = clock
        self.max_attempts = max_attempts
        self.backoff_policy = backoff or Backoff()  # the files queue's rule and settings
        self._rng = random.Random()
        self._depth = 0
        self._running: dict[str, str] = {}  # entry id -> request id, for keep-alive

    async def enqueue(self, invocation: Invocation, function: str) -> None:
        """Store the job in Redis and queue it; QueueUnavailable (503) when Redis is away."""
        now = self._clock()
        job = Job(
            invocation.request_id,
            function,
            invocation,
            0,
            self.max_attempts,
            "queued",
            now,
            None,
            None,
            None,
            None,
            now,
            now,
        )
        try:
            with anyio.fail_after(2):
                await self.jobs.enqueue(job.request_id, job_to_record(job))
        except Exception as exc:
            log.warning("queue: could not store %s in Redis: %s", job.request_id, exc)
            raise QueueUnavailable(job.request_id) from exc
        self._depth += 1

    def depth(self) -> int:
        """Jobs waiting or running across instances, as of the dispatcher's last look."""
        return self._depth

    async def fetch(self, request_id: str) -> Job | None:
        data = await self.jobs.get(request_id)
        return None if data is None else job_from_record(data)

    async def fetch_recent(self, limit: int) -> list[Job]:
        """The newest jobs (the dashboard): the stream's last entries, newest first."""
        entries = await self.jobs.client.xrevrange(self.jobs.stream, count=limit)
        found: list[Job] = []
        for entry in entries:
            rid = entry.field_values.get(b"id", entry.field_values.get("id"))
            job = await self.fetch(rid.decode() if isinstance(rid, bytes) else str(rid))
            if job is not None and job.request_id not in {j.request_id for j in found}:
                found.append(job)
        return found

    async def _save(self, job: Job) -> None:
        record = job_to_record(job)
        if job.state in ("succeeded", "failed"):  # results expire like traces
            await self.jobs.client.set(
                self.jobs.key(job.request_id), _dumps(record), px=FINISHED_TTL_MS
            )
        else:
            await self.jobs.put(job.request_id, record)

    async def run_dispatcher(
        self,
        invoke: Invoke,
        *,
        concurrency: int = 4,
        on_event: OnEvent | None = None,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run jobs from the shared stream, at most ``concurrency`` at a time here."""
        emit = _safe(on_event)
        slots = anyio.Semaphore(concurrency)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._housekeeping, invoke, emit, slots, tasks)
            task_status.started()
            while True:
                await slots.acquire()  # read only as many entries as there are free slots
                slots.release()
                try:
                    with anyio.fail_after(BLOCK_MS / 1000 + 2):
                        await self.jobs.ensure_group()
                        entries = await self.jobs.claim(self.consumer, slots.value, BLOCK_MS)
                except Exception as exc:  # Redis away: the store's health logs the outage
                    log.debug("queue: cannot read the job stream: %s", exc)
                    await anyio.sleep(1)
                    continue
                for entry, request_id in entries:
                    await slots.acquire()
                    tasks.start_soon(self._run_entry, entry, request_id, invoke, emit, slots)

    async def _housekeeping(
        self, invoke: Invoke, emit: OnEvent, slots: anyio.Semaphore, tasks: Any
    ) -> None:
        """Retries that are due, keep-alive of running entries, takeover of dead instances'."""
        last_slow = 0.0
        while True:
            await anyio.sleep(0.2)
            try:
                with anyio.fail_after(2):
                    await self.jobs.promote_due(self._clock())
                    if anyio.current_time() - last_slow < KEEP_ALIVE:
                        continue
                    last_slow = anyio.current_time()
                    await self.jobs.keep_alive(self.consumer, list(self._running))
                    self._depth = await self.jobs.depth()
                    taken = await self.jobs.take_over(self.consumer)
                for entry, request_id in taken:
                    log.warning("queue: taking over %s from a stopped gateway", request_id)
                    await slots.acquire()
                    tasks.start_soon(self._run_entry, entry, request_id, invoke, emit, slots, True)
            except Exception as exc:
                log.debug("queue: housekeeping failed: %s", exc)

    async def _run_entry(
        self,
        entry: str,
        request_id: str,
        invoke: Invoke,
        emit: OnEvent,
        slots: anyio.Semaphore,
        taken_over: bool = False,
    ) -> None:
        self._running[entry] = request_id
        try:
            job = await self.fetch(request_id)
            if job is None or job.state in ("succeeded", "failed"):
                await self.jobs.ack(entry)  # finished already: a duplicate delivery
                return
            now = self._clock()
            if taken_over and job.state == "running":
                job = advance(job, Interrupted(), now)  # the dead instance's attempt: uncounted
            waited = max(0.0, now - job.updated_at)
            job = advance(job, Started(), now)
            await self._save(job)
            await self._attempt(entry, job, waited, invoke, emit)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("queue: could not run %s; another gateway will take it over", request_id)
        finally:
            self._running.pop(entry, None)
            slots.release()

    async def _attempt(
        self, entry: str, job: Job, waited: float, invoke: Invoke, emit: OnEvent
    ) -> None:
        emit(QueueEvent("running", job, job.updated_at, wait_ms=waited * 1000))
        started = self._clock()
        try:
            try:
                result = await invoke(job.function, job.invocation)
            except UnknownFunction as exc:
                await self._finish(entry, job, Failed(str(exc), False), started, emit, exc)
            except FunctionFailed as exc:
                failed = Failed(f"{exc.code}: {exc.message}", exc.status in RETRY_STATUSES)
                await self._finish(entry, job, failed, started, emit, exc, status=exc.status)
            except Exception as exc:
                log.exception("queue: invoking %s for %s failed", job.function, job.request_id)
                failed = Failed(f"internal error: {exc!r}", retryable=True)
                await self._finish(entry, job, failed, started, emit, exc)
            else:
                succeeded = Succeeded(result.status, result.headers, result.body)
                await self._finish(entry, job, succeeded, started, emit, result=result)
        except anyio.get_cancelled_exc_class():
            # A clean stop hands the job back at once (no 20 s takeover wait), uncounted.
            with anyio.move_on_after(2, shield=True):
                await self._save(advance(job, Interrupted(), self._clock()))
                await self.jobs.defer(entry, job.request_id, self._clock())
            raise

    async def _finish(
        self,
        entry: str,
        job: Job,
        outcome: Succeeded | Failed,
        started: float,
        emit: OnEvent,
        failure: BaseException | None = None,
        *,
        status: int | None = None,
        result: InvocationResult | None = None,
    ) -> None:
        """Store the outcome, settle the stream entry, then tell ``emit``."""
        now = self._clock()
        done = advance(job, outcome, now, backoff=self.backoff_policy, draw=self._rng.random())
        await self._save(done)
        if done.state == "queued":
            await self.jobs.defer(entry, job.request_id, done.next_run_at)
        else:
            await self.jobs.ack(entry)
        emit(attempt_event(done, now, started, status, result, failure))


def _dumps(record: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(record)
