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

from ..errors import HttpError
from ..jobs import Job
from ..queue import (
    RETRY_STATUSES,
    Invoke,
    OnEvent,
    UnknownFunction,
    _about,
    _safe,
    backoff_delay,
)
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
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self.jobs = jobs
        self.consumer = consumer
        self._clock = clock
        self.max_attempts = max_attempts
        self._rng = random.Random()
        # the files queue's rule and settings (exponential from 1 s, capped at 60 s, jittered)
        self.backoff = backoff or (lambda n: backoff_delay(n, 1.0, 60.0, self._rng.random()))
        self._depth = 0
        self._running: dict[str, str] = {}  # entry id -> request id, for keep-alive

    async def enqueue(self, invocation: Invocation, function: str) -> None:
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
            raise HttpError(
                503, "queue_unavailable", "the invocation could not be queued; try again"
            ) from exc
        self._depth += 1

    def depth(self) -> int:
        """Jobs waiting or running across instances, as of the dispatcher's last look."""
        return self._depth

    async def fetch(self, request_id: str) -> Job | None:
        data = await self.jobs.get(request_id)
        return None if data is None else job_from_record(data)

    async def _put(self, job: Job) -> None:
        record = job_to_record(job)
        if job.state in ("succeeded", "failed"):
            await self.jobs.client.set(
                self.jobs._key(job.request_id), _dumps(record), px=FINISHED_TTL_MS
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
        emit = _safe(on_event)
        limiter = anyio.Semaphore(concurrency)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._housekeeping, invoke, emit, limiter, tasks)
            task_status.started()
            while True:
                await limiter.acquire()
                limiter.release()
                free = limiter.value
                try:
                    with anyio.fail_after(BLOCK_MS / 1000 + 2):
                        await self.jobs.ensure_group()
                        entries = await self.jobs.claim(self.consumer, free, BLOCK_MS)
                except Exception as exc:  # Redis away: the outage is logged by the store
                    log.debug("queue: cannot read the job stream: %s", exc)
                    await anyio.sleep(1)
                    continue
                for entry, request_id in entries:
                    await limiter.acquire()
                    tasks.start_soon(self._run_entry, entry, request_id, invoke, emit, limiter)

    async def _housekeeping(
        self, invoke: Invoke, emit: OnEvent, limiter: anyio.Semaphore, tasks: Any
    ) -> None:
        """Retries due, keep-alive of running entries, takeover of dead instances' entries."""
        last_slow = 0.0
        while True:
            await anyio.sleep(0.2)
            try:
                with anyio.fail_after(2):
                    await self.jobs.promote_due(self._clock())
                    now = anyio.current_time()
                    if now - last_slow >= KEEP_ALIVE:
                        last_slow = now
                        await self.jobs.keep_alive(self.consumer, list(self._running))
                        self._depth = await self.jobs.depth()
                        for entry, request_id in await self.jobs.take_over(self.consumer):
                            log.warning("queue: taking over %s from a stopped gateway", request_id)
                            await limiter.acquire()
                            tasks.start_soon(
                                self._run_entry, entry, request_id, invoke, emit, limiter, True
                            )
            except Exception as exc:
                log.debug("queue: housekeeping failed: %s", exc)

    async def _run_entry(
        self,
        entry: str,
        request_id: str,
        invoke: Invoke,
        emit: OnEvent,
        limiter: anyio.Semaphore,
        taken_over: bool = False,
    ) -> None:
        self._running[entry] = request_id
        try:
            job = await self.fetch(request_id)
            if job is None or job.state in ("succeeded", "failed"):
                await self.jobs.ack(entry)  # finished already (a duplicate delivery)
                return
            attempts = job.attempts - 1 if (taken_over and job.state == "running") else job.attempts
            now = self._clock()
            waited = max(0.0, now - job.updated_at)
            job = attrs.evolve(job, state="running", attempts=attempts + 1, updated_at=now)
            await self._put(job)
            await self._attempt(entry, job, waited, invoke, emit)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("queue: could not run %s; another instance will take it over", request_id)
        finally:
            self._running.pop(entry, None)
            limiter.release()

    async def _attempt(
        self, entry: str, job: Job, waited: float, invoke: Invoke, emit: OnEvent
    ) -> None:
        emit(job, "running", {**_about(job, job.updated_at), "wait_ms": waited * 1000})
        started = self._clock()
        try:
            try:
                result = await invoke(job.function, job.invocation)
            except UnknownFunction as exc:
                await self._fail(entry, job, str(exc), None, started, emit, exc)
            except FunctionFailed as exc:
                error = f"{exc.code}: {exc.message}"
                if exc.status in RETRY_STATUSES:
                    await self._retry_or_fail(entry, job, error, exc.status, started, emit, exc)
                else:
                    await self._fail(entry, job, error, exc.status, started, emit, exc)
            except Exception as exc:
                log.exception("queue: invoking %s for %s failed", job.function, job.request_id)
                error = f"internal error: {exc!r}"
                await self._retry_or_fail(entry, job, error, None, started, emit, exc)
            else:
                await self._succeed(entry, job, result, started, emit)
        except anyio.get_cancelled_exc_class():
            # A clean stop: back on the stream at once, this attempt not counted.
            with anyio.move_on_after(2, shield=True):
                again = attrs.evolve(job, state="queued", attempts=job.attempts - 1)
                await self._put(again)
                await self.jobs.defer(entry, job.request_id, self._clock())
            raise

    async def _succeed(
        self, entry: str, job: Job, result: InvocationResult, started: float, emit: OnEvent
    ) -> None:
        now = self._clock()
        done = attrs.evolve(
            job,
            state="succeeded",
            result_status=result.status,
            result_headers=result.headers,
            result_body=result.body,
            error=None,
            updated_at=now,
        )
        await self._put(done)
        await self.jobs.ack(entry)
        emit(
            done,
            "succeeded",
            {
                **_about(job, now),
                "status": result.status,
                "duration_ms": (now - started) * 1000,
                "result": result,
            },
        )

    async def _retry_or_fail(
        self,
        entry: str,
        job: Job,
        error: str,
        status: int | None,
        started: float,
        emit: OnEvent,
        exc: BaseException,
    ) -> None:
        if job.attempts >= job.max_attempts:
            error = f"{error} (gave up after {job.attempts} attempts)"
            await self._fail(entry, job, error, status, started, emit, exc)
            return
        now = self._clock()
        delay = self.backoff(job.attempts)
        again = attrs.evolve(
            job, state="queued", next_run_at=now + delay, error=error, updated_at=now
        )
        await self._put(again)
        await self.jobs.defer(entry, job.request_id, now + delay)
        emit(
            again,
            "retry",
            {
                **_about(job, now),
                "status": status,
                "error": error,
                "delay_s": delay,
                "duration_ms": (now - started) * 1000,
                "exception": exc,
            },
        )

    async def _fail(
        self,
        entry: str,
        job: Job,
        error: str,
        status: int | None,
        started: float,
        emit: OnEvent,
        exc: BaseException,
    ) -> None:
        now = self._clock()
        done = attrs.evolve(job, state="failed", error=error, updated_at=now)
        await self._put(done)
        await self.jobs.ack(entry)
        emit(
            done,
            "failed",
            {
                **_about(job, now),
                "status": status,
                "error": error,
                "duration_ms": (now - started) * 1000,
                "exception": exc,
            },
        )


def _dumps(record: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(record)
