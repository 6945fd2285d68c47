"""The ASGI app: SPEC §1's pipeline, step by step, in one place.

Each step asks a pure module for a decision (keys, ratelimit, routing, cors) and either answers
the request or passes it on, like Envoy's filter chain. CORS headers and ``x-request-id`` are
added in :meth:`Gateway._finish`, which every answer goes through, errors and preflights
included. Background work (live reload, workers, trace writer, queue, state saving) runs in
:meth:`Gateway.run`, which the server (or the test harness) starts in its own task group.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import attrs
import orjson

from . import cors, keys
from .dispatch import build_invocation, function_headers
from .errors import HttpError, StateError
from .feed import RequestFeed, job_event, request_event
from .httpio import (
    MAX_BODY,
    Headers,
    Receive,
    Scope,
    Send,
    decode_headers,
    error_body,
    read_body,
    send_response,
)
from .jobs import job_to_json
from .live import LiveLoader, LiveState
from .metrics import Metrics
from .queue import JobQueue, UnknownFunction
from .ratelimit import GcraLimiter, policy_header, ratelimit_header
from .runtime.api import FunctionFailed, Invocation, InvocationResult
from .runtime.pool import PoolManager, Stream
from .state import StateDir
from .streaming import send_stream
from .tracestore import TraceStore
from .tracing import (
    Span,
    TraceRecord,
    invocation_spans,
    new_request_id,
    parse_traceparent,
)

log = logging.getLogger("fluxgw.gateway")

RELOAD_INTERVAL = 0.2  # s between stat checks of .flux/: a change is live within 1 s
SAVE_INTERVAL = 2.0  # s between saves of limiter state and key last-used times
JSON = ("content-type", "application/json")
INTERNAL_PREFIX = "/_flux/"


@attrs.define
class GatewayOptions:
    clock: Callable[[], float] = time.time  # wall clock: limiter state survives restarts
    max_workers: int | None = None  # per function; None: one per CPU (docs/runtimes.md)
    min_workers: int = 0  # per function, kept warm by the idle reaper
    idle_timeout: float = 300.0
    prewarm: bool = False
    tracing: bool = True
    max_body: int = MAX_BODY


@attrs.define
class Exchange:
    """What one request accumulates on its way through the pipeline (for the answer and
    its trace)."""

    request_id: str
    method: str
    path: str
    headers: dict[str, str]
    started: float
    started_perf: float
    live: LiveState
    key_name: str | None = None
    rate_headers: Headers = attrs.Factory(list)
    span: dict[str, Any] = attrs.Factory(dict)  # attributes of the gateway span
    function: str | None = None
    extra_spans: list[Span] = attrs.Factory(list)
    logs: tuple = ()
    trace_id: str = ""
    message: str | None = None  # an error answer's human text (for the request log)
    resources: contextlib.AsyncExitStack = attrs.Factory(contextlib.AsyncExitStack)
    stream: Stream | None = None  # a streamed answer, sent after the pipeline returned
    result: InvocationResult | None = None


class Gateway:
    """``await gateway(scope, receive, send)`` serves one request; ``gateway.run()`` does the
    background work. Create one per project folder."""

    def __init__(self, state: StateDir, options: GatewayOptions | None = None) -> None:
        self.state = state
        self.options = options or GatewayOptions()
        self.clock = self.options.clock
        self.limiter = GcraLimiter(self.clock)
        self.pool = PoolManager(
            max_workers=self.options.max_workers,
            min_workers=self.options.min_workers,
            idle_timeout=self.options.idle_timeout,
        )
        self.loader = LiveLoader(state)
        self.traces = TraceStore(state.traces_db, enabled=self.options.tracing)
        self.queue = JobQueue(state.queue_db)
        self.metrics = Metrics()
        self.feed = RequestFeed()  # completed requests and job events, live (docs/logs.md)
        self.key_usage: dict[str, float] = {}
        self._dirty = False
        self._live: LiveState | None = None
        self._deployed_version: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Read .flux/ and restore limiter state (blocking; before serving)."""
        self._live = self.loader.load()
        saved = self.state.read_json(self.state.ratelimit_file, default={})
        if isinstance(saved, dict):
            self.limiter.restore({k: float(v) for k, v in saved.items()})

    @property
    def live(self) -> LiveState:
        if self._live is None:
            self.load()
        assert self._live is not None
        return self._live

    def install(self, live: LiveState) -> None:
        """Make ``live`` the state new requests see; a new deployment gets new workers.

        Runs on the event loop (the pool's bookkeeping uses anyio primitives)."""
        self._live = live
        deployed = self._deployed_version
        if deployed is None or live.deployment.version != deployed:
            self._deployed_version = live.deployment.version
            self.pool.deploy(live.deployment.functions, prewarm=self.options.prewarm)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """All background work; cancel it to stop (saves state, stops workers)."""
        if self._live is None:
            await anyio.to_thread.run_sync(self.load)
        assert self._live is not None
        try:
            async with anyio.create_task_group() as tasks:
                await tasks.start(self.pool.run)
                self.install(self._live)
                await tasks.start(self.traces.run)
                await tasks.start(self._reload_loop)
                await tasks.start(self._save_loop)
                await tasks.start(self._run_queue)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await anyio.to_thread.run_sync(self.save_state, self.state_snapshot())
                await self.pool.aclose()

    async def _run_queue(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self.queue.run_dispatcher(
            self._invoke_queued, on_event=self._on_queue_event, task_status=task_status
        )

    async def _reload_loop(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await anyio.sleep(RELOAD_INTERVAL)
            if not self.loader.changed():
                continue
            try:
                await self.reload_now()
            except StateError as exc:
                log.error("keeping the previous state: %s", exc)
            except Exception:  # a reload must never take the gateway down
                log.exception("reload failed; keeping the previous state")

    async def reload_now(self) -> None:
        """Pick up .flux/ changes at once (used by `flux dev` and the test harness)."""
        self.install(await anyio.to_thread.run_sync(self.loader.load))

    async def _save_loop(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await anyio.sleep(SAVE_INTERVAL)
            if self._dirty:
                await anyio.to_thread.run_sync(self.save_state, self.state_snapshot())

    def state_snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """Limiter buckets and key last-used times, copied on the event loop: iterating them
        in a thread while requests add keys would fail ('dictionary changed size')."""
        self._dirty = False
        return self.limiter.snapshot(), dict(self.key_usage)

    def save_state(self, snapshot: tuple[dict[str, float], dict[str, float]] | None = None) -> None:
        """Persist a :meth:`state_snapshot` (atomic writes, under the lock); blocking."""
        buckets, usage = snapshot if snapshot is not None else self.state_snapshot()
        try:
            with self.state.lock():
                self.state.write_json(self.state.ratelimit_file, buckets)
                if usage:
                    self.state.write_json(self.state.key_usage_file, usage)
        except (StateError, OSError) as exc:
            log.error("could not save gateway state: %s", exc)

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served: hypercorn answers the handshake with 500 if we return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Returning at once on lifespan crashes hypercorn's trio worker: acknowledge both.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(
            request_id=new_request_id(),
            method=scope["method"],
            path=scope["path"],
            headers=decode_headers(scope["headers"]),
            started=time.time(),
            started_perf=time.perf_counter(),
            live=self.live,
        )
        # The exit stack holds a streamed invocation open until its body has been sent.
        async with contextlib.AsyncExitStack() as ex.resources:
            try:
                status, headers, body = await self._pipeline(ex, scope, receive)
            except HttpError as exc:
                status, headers, body = exc.status, [*exc.headers, JSON], b""
                body = error_body(exc.code, exc.message, ex.request_id)
                ex.span.setdefault("error", exc.code)
                ex.message = exc.message
            except Exception:  # a bug of ours: still a proper answer with an id to trace
                log.exception("internal error handling request %s", ex.request_id)
                status, headers = 500, [JSON]
                body = error_body(
                    "internal_error", "the gateway failed; see its log", ex.request_id
                )
                ex.span["error"] = "internal_error"
            headers = self._finish(ex, status, headers)
            if ex.stream is None:
                await send_response(send, status, headers, body)
            else:
                await send_stream(send, receive, status, headers, ex.stream)
        if ex.stream is not None:
            self._stream_spans(ex)
        self._record(ex, status)

    async def _pipeline(
        self, ex: Exchange, scope: Scope, receive: Receive
    ) -> tuple[int, Headers, bytes]:
        live = ex.live
        if ex.method == "OPTIONS" and cors.is_preflight(ex.method, ex.headers):
            return self._preflight(ex)
        if ex.path == "/_flux/health":
            return self._health(live)

        # 1. authentication
        outcome = live.keys.authenticate(ex.headers.get("authorization"))
        ex.span["auth"] = outcome.code
        if not outcome.ok:
            extra = [("www-authenticate", "Bearer")] if outcome.status == 401 else []
            raise HttpError(outcome.status, outcome.code, outcome.message, extra)
        record = outcome.record
        assert record is not None
        ex.key_name = record.name
        ex.span["key"] = record.name
        self.key_usage[record.key_hash] = time.time()

        # 2. rate limit, per key, against the project's plan
        decision = self.limiter.check(record.key_hash, live.plan)
        self._dirty = True
        ex.rate_headers = [
            ("ratelimit-policy", policy_header(live.plan)),
            ("ratelimit", ratelimit_header(live.plan, decision)),
        ]
        ex.span["ratelimit"] = {"allowed": decision.allowed, "remaining": decision.remaining}
        if not decision.allowed:
            self.metrics.count_rate_limited()
            raise HttpError(
                429,
                "rate_limited",
                f"rate limit of the {live.plan.name} plan exceeded "
                f"({live.plan.rate_per_minute}/min, burst {live.plan.burst}); "
                f"retry in {decision.retry_after} s",
                [("retry-after", str(decision.retry_after))],
            )

        if ex.path.startswith(INTERNAL_PREFIX):
            return await self._internal(ex, record)

        # 3. route lookup
        match = live.routes.lookup(ex.method, ex.path)
        if match.spec is None:
            ex.span["route"] = "no match"
            hint = (
                f" (served methods: {', '.join(match.allowed_methods)})"
                if (match.allowed_methods)
                else ""
            )
            raise HttpError(404, "not_found", f"no function at {ex.method} {ex.path}{hint}")
        spec = match.spec
        ex.function = spec.name
        ex.span["route"] = f"{spec.method} {spec.route} -> {spec.name}"
        scoped = live.keys.authorize(record, spec.name)
        if not scoped.ok:
            ex.span["auth"] = scoped.code
            raise HttpError(scoped.status, scoped.code, scoped.message)

        # 4 and 5 (CORS, x-request-id) apply to every answer: see _finish.
        # 6. dispatch
        # The body must arrive within the function's timeout: hypercorn does not
        # report a client that stalls or goes away, so an unbounded read would hang forever.
        with anyio.move_on_after(spec.timeout) as reading:
            body = await read_body(
                receive,
                ex.headers.get("content-length"),
                self.options.max_body,
                chunked="transfer-encoding" in ex.headers,
            )
        if reading.cancelled_caught:
            raise HttpError(
                408,
                "request_timeout",
                f"the request body did not arrive within {spec.timeout:g} s",
                [("connection", "close")],
            )
        invocation = build_invocation(
            request_id=ex.request_id,
            method=ex.method,
            path=ex.path,
            headers=ex.headers,
            scope=scope,
            spec=spec,
            body=body,
        )
        ex.trace_id = invocation.trace_id
        if spec.is_async:
            await self.queue.enqueue(invocation, spec.name)
            ex.span["queued"] = True
            payload = {"request_id": ex.request_id, "status": "queued"}
            return 202, [JSON], orjson.dumps(payload)
        try:
            answer = await ex.resources.enter_async_context(self.pool.open(spec, invocation))
        except FunctionFailed as failure:
            self._runtime_spans(ex, failure=failure)
            extra = [("retry-after", str(failure.retry_after))] if failure.retry_after else []
            raise HttpError(failure.status, failure.code, failure.message, extra) from None
        result = answer.result
        if answer.stream is not None:  # spans once it ended: see _stream_spans
            ex.stream, ex.result = answer.stream, result
            return result.status, function_headers(result.headers), b""
        self._runtime_spans(ex, result=result)
        return result.status, function_headers(result.headers), result.body

    # -- steps -------------------------------------------------------------------------------
    def _preflight(self, ex: Exchange) -> tuple[int, Headers, bytes]:
        headers, decision = cors.preflight_headers(
            ex.live.cors,
            ex.headers.get("origin", ""),
            ex.headers.get("access-control-request-method", ""),
            ex.headers.get("access-control-request-headers"),
            ex.live.routes.methods_for(ex.path),
        )
        ex.span["preflight"] = decision
        return 204, headers, b""

    def _health(self, live: LiveState) -> tuple[int, Headers, bytes]:
        payload = {
            "status": "ok",
            "deployment": live.deployment.version,
            "functions": len(live.deployment.functions),
        }
        return 200, [JSON, ("cache-control", "no-store")], orjson.dumps(payload)

    async def _internal(self, ex: Exchange, record: keys.KeyRecord) -> tuple[int, Headers, bytes]:
        """/_flux/ endpoints. Metrics and invocation results need an unscoped key of this
        project (a scoped key is meant for calling its functions only); an invocation can also
        be read with the key that queued it."""
        ex.span["route"] = f"internal {ex.path}"
        if ex.method != "GET":
            raise HttpError(404, "not_found", f"no function at {ex.method} {ex.path}")
        if ex.path == "/_flux/metrics":
            if record.functions:
                raise HttpError(403, "forbidden", "metrics need a key not scoped to functions")
            text = self.metrics.render(
                workers=self.pool.stats(),
                queue_depth=self.queue.depth(),
                trace_backlog=self.traces.backlog,
                trace_dropped=self.traces.dropped,
            )
            return (
                200,
                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                (text.encode()),
            )
        prefix = "/_flux/invocations/"
        if ex.path.startswith(prefix):
            request_id = ex.path[len(prefix) :]
            job = await anyio.to_thread.run_sync(self.queue.get, request_id)
            if job is None or (record.functions and job.function not in record.functions):
                raise HttpError(404, "not_found", f"no async invocation {request_id!r}")
            return 200, [JSON], orjson.dumps(job_to_json(job))
        raise HttpError(404, "not_found", f"no gateway endpoint at {ex.path}")

    def _finish(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        """Steps 4 and 5 for every answer: CORS headers, rate-limit fields, x-request-id."""
        if status != 204 or "preflight" not in ex.span:
            cors_headers, decision = cors.response_headers(
                ex.live.cors, ex.headers.get("origin"), ex.method
            )
            ex.span["cors"] = decision
            if any(name == "vary" for name, _ in headers):  # the function set its own Vary
                vary = [v for n, v in cors_headers if n.lower() == "vary"]
                headers = [*headers, *((n, v) for n, v in cors_headers if n.lower() != "vary")]
                headers = cors.merge_vary(headers, vary)
            else:  # the common case: nothing to merge (function headers are lower-cased)
                headers = [*headers, *cors_headers]
        headers.extend(ex.rate_headers)
        headers.append(("x-request-id", ex.request_id))
        return headers

    def _runtime_spans(
        self,
        ex: Exchange,
        *,
        result: InvocationResult | None = None,
        failure: FunctionFailed | None = None,
    ) -> None:
        ex.extra_spans.extend(
            invocation_spans(
                end=time.time(),
                result=result,
                failure=failure,
                started=ex.started,
                function=ex.function,
            )
        )
        outcome = result if result is not None else failure
        ex.logs = outcome.logs if outcome is not None else ()

    def _stream_spans(self, ex: Exchange) -> None:
        """A streamed call's spans: its whole duration, how the stream ended, bytes, chunks,
        time to first byte; its logs are complete only now."""
        stream, result = ex.stream, ex.result
        assert stream is not None and result is not None
        run_ms = (anyio.current_time() - stream.started) * 1000
        result = attrs.evolve(result, run_ms=run_ms, logs=stream.logs())
        self._runtime_spans(ex, result=result)
        ex.extra_spans[-1].attributes.update(stream.attributes())
        ex.span["stream"] = stream.outcome

    def _record(self, ex: Exchange, status: int) -> None:
        duration_ms = (time.perf_counter() - ex.started_perf) * 1000
        self.metrics.observe_request(ex.function, status, duration_ms / 1000)
        if self.feed.active:
            self._publish(ex, status, duration_ms)
        if not self.traces.enabled:
            return
        gateway_span = Span(
            name="gateway", start=ex.started, duration_ms=duration_ms, attributes=ex.span
        )
        self.traces.record(
            TraceRecord(
                request_id=ex.request_id,
                started_at=ex.started,
                method=ex.method,
                path=ex.path,
                status=status,
                duration_ms=duration_ms,
                function=ex.function,
                key_name=ex.key_name,
                client_request_id=ex.headers.get("x-request-id"),
                traceparent_in=ex.headers.get("traceparent"),
                # a request refused before dispatch still joins the caller's trace, if it sent one
                trace_id=ex.trace_id
                or (parse_traceparent(ex.headers.get("traceparent")) or ("",))[0],
                spans=[gateway_span, *ex.extra_spans],
                logs=list(ex.logs),
                async_state="queued" if ex.span.get("queued") else None,
            )
        )

    def _publish(self, ex: Exchange, status: int, duration_ms: float) -> None:
        self.feed.publish(
            request_event(
                at=ex.started,
                request_id=ex.request_id,
                method=ex.method,
                path=ex.path,
                status=status,
                duration_ms=duration_ms,
                function=ex.function,
                principal=ex.key_name,
                gateway_span=ex.span,
                spans=ex.extra_spans,
                logs=ex.logs,
                message=ex.message,
            )
        )

    # -- async invocations -------------------------------------------------------------------
    async def _invoke_queued(self, function: str, invocation: Invocation) -> InvocationResult:
        spec = self.live.routes.by_name(function)
        if spec is None:  # removed by a redeploy: fail the job at once, no retries
            raise UnknownFunction(function)
        fresh = attrs.evolve(invocation, deadline=time.time() + spec.timeout)
        return await self.pool.invoke(spec, fresh)

    def _on_queue_event(self, job, event: str, details: dict[str, Any]) -> None:
        self.traces.update_async_state(job.request_id, event, details)
        if self.feed.active:
            self.feed.publish(job_event(job.request_id, event, details))
