"""The ASGI app: the request pipeline, one named step per stage, and the background work.

:meth:`Gateway.handle` reads top-down like the contract in docs/reference.md: answer a CORS
preflight or the health check, then authenticate, admit (rate limit), route, read the body and
dispatch. Each step is a small method that either passes on what the next one needs or refuses
the request by raising :class:`HttpError`; each asks a pure module for its decision (keys,
ratelimit, routing, cors). CORS headers, rate-limit fields and ``x-request-id`` are added in
:meth:`Gateway._finish`, which every answer goes through, errors and preflights included.
Background work (live reload, workers, trace writer, queue, state saving) runs in
:meth:`Gateway.run`, which the server (or the test harness) starts in its own task group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import attrs
import orjson

from . import cors, endpoints, reserve
from .auth.principal import Principal
from .auth.step import authenticate, check_credential, check_scope
from .dispatch import build_invocation, function_headers
from .endpoints import Endpoints
from .errors import HttpError, StateError
from .exchange import Exchange
from .feed import RequestFeed, exchange_event, job_event
from .httpedges import check_framing, refuse_websocket
from .httpio import (
    JSON,
    MAX_BODY,
    Answer,
    Headers,
    Receive,
    Scope,
    Send,
    answer_lifespan,
    decode_headers,
    drain_declared_body,
    error_body,
    read_body,
    send_response,
)
from .jobs import QueueEvent
from .live import LiveLoader, LiveState
from .metrics import Metrics
from .project import FunctionSpec
from .queue import JobQueue, QueueUnavailable, UnknownFunction
from .ratelimit import Decision, GcraLimiter, Plan, policy_header, ratelimit_header
from .redact import LogRedactionFilter
from .runtime.api import FunctionFailed, Invocation, InvocationResult
from .runtime.options import PoolOptions
from .runtime.pool import PoolManager
from .runtime.sandbox import Launcher, detect_sandbox
from .safeio import shorten
from .secretstore import affected_functions
from .state import StateDir
from .store import open_store
from .store.shared_limiter import StoreUnavailable
from .streaming import send_stream
from .tracestore import TraceStore
from .tracing import new_request_id, request_trace

if TYPE_CHECKING:
    from .store.redis_queue import RedisJobQueue
    from .store.redis_traces import RedisTraceStore

log = logging.getLogger("fluxgw.gateway")

RELOAD_INTERVAL = 0.2  # s between stat checks of .flux/: a change is live within 1 s
SAVE_INTERVAL = 2.0  # s between saves of limiter state and key last-used times
# Loggers that can carry a function's output or error text: redacted like traces.
REDACTED_LOGGERS = ("fluxgw.runtime", "fluxgw.gateway", "fluxgw.queue")


@attrs.define
class GatewayOptions:
    # The wall clock of the request path (epoch seconds: limiter state survives restarts);
    # the test harness passes a fake one.
    clock: Callable[[], float] = time.time
    pool: PoolOptions = attrs.Factory(PoolOptions)
    tracing: bool = True
    max_body: int = MAX_BODY
    disk_reserve: bool = False  # keep .flux/space-reserve (flux serve/dev; reserve.py)
    sandbox: bool = True  # run workers under bubblewrap when it works here (docs/sandbox.md)
    dotenv: Path | None = None  # `flux dev`: functions/.env over the stored secrets


class Gateway:
    """``await gateway(scope, receive, send)`` serves one request; ``gateway.run()`` does the
    background work. Create one per project folder."""

    def __init__(self, state: StateDir, options: GatewayOptions | None = None) -> None:
        self.state = state
        self.options = options or GatewayOptions()
        self.clock = self.options.clock
        self.limiter = GcraLimiter(self.clock)
        # Workers get their declared env and secrets, inside the sandbox (detected in load()).
        self.launcher = Launcher(variables=self._function_env)
        self.pool = PoolManager(self.options.pool, wall_clock=self.clock, launcher=self.launcher)
        self.loader = LiveLoader(state, self.clock, dotenv=self.options.dotenv)
        # The shared store (docs/redis.md): None for the files store, the default.
        self.store = open_store(state, clock=self.clock, tracing=self.options.tracing)
        self.traces: TraceStore | RedisTraceStore  # same interface, per store
        if self.store is not None:
            state.documents = self.store.cache  # keys and settings come from Redis
            self.traces = self.store.traces
        else:
            self.traces = TraceStore(state.traces_db, enabled=self.options.tracing)
        self.queue: JobQueue | RedisJobQueue  # same interface, per store
        self.queue = self.store.queue if self.store else JobQueue(state.queue_db)
        self.metrics = Metrics()
        self.endpoints = Endpoints(self.metrics, self.pool, self.queue, self.traces, self.store)
        self.feed = RequestFeed()  # completed requests and job events, live (docs/logs.md)
        self.key_usage: dict[str, float] = {}
        self._dirty = False
        self._save_error: str | None = None
        self._live: LiveState | None = None
        self._deployed_version: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Read .flux/ and restore limiter state (blocking; before serving)."""
        if self.store is not None:
            self.store.prime()  # the shared keys and settings, before the first request
            self._live = self.loader.load()
            return  # limiter state lives in Redis
        self._live = self.loader.load()
        if self.options.disk_reserve:  # space a revocation can use on a full disk
            reserve.ensure(self.state.root)
        if not self.launcher.sandbox.enabled:
            self.launcher.sandbox = detect_sandbox(self.options.sandbox)
        try:
            self.limiter.restore(self.state.read_epoch_map(self.state.ratelimit_file))
        except StateError as exc:  # limiter state only: serve with full buckets, say so once
            log.error("%s; starting with full rate-limit buckets", exc)

    @property
    def live(self) -> LiveState:
        if self._live is None:
            self.load()
        assert self._live is not None
        return self._live

    def install(self, live: LiveState) -> None:
        """Make ``live`` the state new requests see; a new deployment gets new workers.

        Runs on the event loop (the pool's bookkeeping uses anyio primitives)."""
        previous, self._live = self._live, live
        deployed = self._deployed_version
        if deployed is None or live.deployment.version != deployed:
            self._deployed_version = live.deployment.version
            self.pool.deploy(live.deployment.functions, prewarm=self.options.pool.prewarm)
        elif previous is not None and previous.secrets != live.secrets:
            # Only the functions using a changed secret get new workers (after in-flight work).
            functions = live.deployment.functions
            self.pool.refresh(affected_functions(functions, previous.secrets, live.secrets))

    def _function_env(self, spec: FunctionSpec) -> dict[str, str]:
        """A worker's declared environment: flux.json ``env``, then its secrets' values."""
        secrets = self.live.secrets
        return {**dict(spec.env), **{n: secrets[n] for n in spec.secrets if n in secrets}}

    async def invoke(self, spec: FunctionSpec, invocation: Invocation) -> InvocationResult:
        """Run a function; secret values in its logs and errors come back redacted."""
        try:
            result = await self.pool.invoke(spec, invocation)
        except FunctionFailed as failure:
            raise self.live.redactor.redact_failure(failure) from None
        return self.live.redactor.redact_result(result)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """All background work; cancel it to stop (saves state, stops workers)."""
        if self._live is None:
            await anyio.to_thread.run_sync(self.load)
        assert self._live is not None
        redaction = LogRedactionFilter(lambda: self.live.redactor)
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).addFilter(redaction)
        try:
            async with anyio.create_task_group() as tasks:
                await tasks.start(self.pool.run)
                self.install(self._live)
                # The Redis store's task runs its own trace writer.
                await tasks.start(self.store.run if self.store else self.traces.run)
                await tasks.start(self._reload_loop)
                await tasks.start(self._save_loop)
                await tasks.start(self._run_queue)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await anyio.to_thread.run_sync(self.save_state, self.state_snapshot())
                await self.pool.aclose()
            for name in REDACTED_LOGGERS:
                logging.getLogger(name).removeFilter(redaction)

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
            except StateError as exc:  # once per distinct content of the file
                if self.loader.first_report(exc):
                    log.error("keeping the previous state: %s", exc)
            except Exception:  # a reload must never take the gateway down (retried on change)
                log.exception("reload failed; keeping the previous state")
            else:
                if recovered := self.loader.take_recovered():
                    log.warning("%s is valid again", recovered)

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
                # never the disk reserve: it is kept for `flux api-keys revoke` (reserve.py)
                self.state.write_json(self.state.ratelimit_file, buckets, use_reserve=False)
                if usage:
                    self.state.write_json(self.state.key_usage_file, usage, use_reserve=False)
        except (StateError, OSError) as exc:
            if str(exc) != self._save_error:  # once per kind: a full disk fails every 2 s
                log.error("could not save gateway state: %s", exc)
            self._save_error = str(exc)
        else:
            self._save_error = None
        if self.options.disk_reserve:
            reserve.ensure(self.state.root)

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":  # not served: a JSON 501, not hypercorn's empty 500
            await refuse_websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await answer_lifespan(receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(
            request_id=new_request_id(),
            method=scope["method"],
            path=scope["path"],
            headers=decode_headers(scope["headers"]),
            started=self.clock(),
            started_perf=time.perf_counter(),
            live=self.live,
        )
        # The exit stack holds a streamed invocation open until its body has been sent.
        async with ex.resources:
            try:
                status, headers, body = await self._pipeline(ex, scope, receive)
            except HttpError as exc:
                status, headers = exc.status, [*exc.headers, JSON]
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
                if self.feed.active:  # before the answer leaves: an async job's events follow
                    duration_ms = (time.perf_counter() - ex.started_perf) * 1000
                    self.feed.publish(exchange_event(ex, status, duration_ms))
                await send_response(send, status, headers, body)
            else:
                await send_stream(send, receive, status, headers, ex.stream)
        if ex.stream is not None:  # published once the stream ended, with how it ended
            self._stream_spans(ex)
            if self.feed.active:
                duration_ms = (time.perf_counter() - ex.started_perf) * 1000
                self.feed.publish(exchange_event(ex, status, duration_ms))
        self._record(ex, status)

    async def _pipeline(self, ex: Exchange, scope: Scope, receive: Receive) -> Answer:
        """The steps in order (docs/reference.md, "The request pipeline")."""
        check_framing(ex.headers)  # Content-Length with Transfer-Encoding: 400, close
        if ex.method == "OPTIONS" and cors.is_preflight(ex.method, ex.headers):
            return self.preflight(ex)
        if ex.path == endpoints.HEALTH:
            return endpoints.health(ex.live, self.launcher.sandbox.note, self.store)
        principal = await self.authenticate(ex)
        await self.admit(ex, principal)
        if ex.path.startswith(endpoints.PREFIX):
            check_credential(principal, ex.path, ("key",))
            assert principal.record is not None
            return await self.endpoints.answer(ex, principal.record)
        spec = self.route(ex, principal)
        body = await self.read_body(ex, spec, receive, scope.get("http_version") == "2")
        return await self.dispatch(ex, spec, scope, body)

    # -- steps -------------------------------------------------------------------------------
    def preflight(self, ex: Exchange) -> Answer:
        """A CORS preflight: answered before authentication (browsers send no key with it)."""
        headers, decision = cors.preflight_headers(
            ex.live.cors,
            ex.headers.get("origin", ""),
            ex.headers.get("access-control-request-method", ""),
            ex.headers.get("access-control-request-headers"),
            ex.live.routes.methods_for(ex.path),
        )
        ex.preflight = True
        ex.span["preflight"] = decision
        return Answer(204, headers, b"")

    async def authenticate(self, ex: Exchange) -> Principal:
        """Who is calling: an API key or a user token in ``Authorization: Bearer`` (docs/auth.md),
        else 401/403 (503 when a token's key set cannot be fetched). The trace records who,
        never the credential."""
        try:
            principal = await authenticate(
                ex.live.keys, ex.live.tokens, ex.headers.get("authorization")
            )
        except HttpError as refused:
            ex.span["auth"] = refused.code
            raise
        ex.principal = principal
        ex.span["auth"] = "ok"
        ex.span.update(principal.trace_attributes())
        if principal.key_hash is not None:
            ex.key_name = principal.name
            self.key_usage[principal.key_hash] = ex.started
        return principal

    async def admit(self, ex: Exchange, principal: Principal) -> None:
        """The caller's rate limit, per key or token subject, against the project's plan;
        else 429."""
        plan = ex.live.plan
        if self.store is None:
            decision = self.limiter.check(principal.bucket, plan)
        else:  # shared by every gateway of the project (docs/redis.md)
            decision = await self._shared_admit(principal.bucket, plan)
        self._dirty = True
        ex.rate_headers = [
            ("ratelimit-policy", policy_header(plan)),
            ("ratelimit", ratelimit_header(plan, decision)),
        ]
        ex.span["ratelimit"] = {"allowed": decision.allowed, "remaining": decision.remaining}
        if not decision.allowed:
            self.metrics.count_rate_limited()
            raise HttpError(
                429,
                "rate_limited",
                f"rate limit of the {plan.name} plan exceeded "
                f"({plan.rate_per_minute}/min, burst {plan.burst}); "
                f"retry in {decision.retry_after} s",
                [("retry-after", str(decision.retry_after))],
            )

    def route(self, ex: Exchange, principal: Principal) -> FunctionSpec:
        """The function at this method and path, if the caller may call it: 404, 401 for a
        credential kind it does not take, 403 for a key scoped to other functions."""
        match = ex.live.routes.lookup(ex.method, ex.path)
        if match.spec is None:
            ex.span["route"] = "no match"
            served = match.allowed_methods
            hint = f" (served methods: {', '.join(served)})" if served else ""
            raise HttpError(
                404, "not_found", f"no function at {ex.method} {shorten(ex.path, 200)}{hint}"
            )
        spec = match.spec
        ex.function = spec.name
        ex.span["route"] = f"{spec.method} {spec.route} -> {spec.name}"
        try:
            check_credential(principal, f"function {spec.name!r}", spec.auth)
            check_scope(principal, spec.name)
        except HttpError as refused:
            ex.span["auth"] = refused.code
            raise
        return spec

    async def read_body(
        self, ex: Exchange, spec: FunctionSpec, receive: Receive, http2: bool
    ) -> bytes:
        """The whole body, within the function's timeout (else 408) and size limit (413).

        Bounded in time because hypercorn does not report a client that stalls or goes away:
        an unbounded read would hold the connection forever."""
        # An HTTP/2 request may carry a body without Content-Length (its end is the stream's
        # end): always read it. HTTP/1.1 without Content-Length or Transfer-Encoding has none.
        unframed = http2 and "content-length" not in ex.headers
        if not unframed and "transfer-encoding" not in ex.headers:
            length = ex.headers.get("content-length")
            if length is None or length == "0":
                return b""  # nothing to wait for: no timer (a cancel scope per request)
        with anyio.move_on_after(spec.timeout) as reading:
            try:
                body = await read_body(
                    receive,
                    ex.headers.get("content-length"),
                    self.options.max_body,
                    chunked="transfer-encoding" in ex.headers or unframed,
                )
            except HttpError as refused:
                if refused.status == 413 and "transfer-encoding" not in ex.headers:
                    await drain_declared_body(receive, ex.headers.get("content-length"))
                raise
        if reading.cancelled_caught:
            raise HttpError(
                408,
                "request_timeout",
                f"the request body did not arrive within {spec.timeout:g} s",
                [("connection", "close")],
            )
        return body

    async def dispatch(self, ex: Exchange, spec: FunctionSpec, scope: Scope, body: bytes) -> Answer:
        """Run the function (502/504 when it cannot answer), or queue it if it is async."""
        invocation = build_invocation(
            request_id=ex.request_id,
            method=ex.method,
            path=ex.path,
            headers=ex.headers,
            scope=scope,
            spec=spec,
            body=body,
            now=ex.started,
            principal=ex.principal,
        )
        ex.trace_id = invocation.trace_id
        if spec.is_async:
            try:
                await self.queue.enqueue(invocation, spec.name)
            except QueueUnavailable:
                raise HttpError(
                    503, "queue_unavailable", "the invocation could not be queued; try again"
                ) from None
            ex.queued = ex.span["queued"] = True
            payload = {"request_id": ex.request_id, "status": "queued"}
            return Answer(202, [JSON], orjson.dumps(payload))
        try:
            opened = await ex.resources.enter_async_context(self.pool.open(spec, invocation))
        except FunctionFailed as raw:  # secret values in its logs and errors: redacted
            failure = self.live.redactor.redact_failure(raw)
            ex.ran(self.clock(), failure=failure)
            extra = [("retry-after", str(failure.retry_after))] if failure.retry_after else []
            raise HttpError(failure.status, failure.code, failure.message, extra) from None
        result = self.live.redactor.redact_result(opened.result)
        if opened.stream is not None:  # its spans once it ended: see _stream_spans
            ex.stream, ex.result = opened.stream, result
            return Answer(result.status, function_headers(result.headers), b"")
        ex.ran(self.clock(), result=result)
        return Answer(result.status, function_headers(result.headers), result.body)

    def _stream_spans(self, ex: Exchange) -> None:
        """A streamed call's spans: its whole duration, how the stream ended, bytes, chunks,
        time to first byte; its logs are complete only now (docs/runtimes.md, "Streaming")."""
        stream, result = ex.stream, ex.result
        assert stream is not None and result is not None
        run_ms = (time.perf_counter() - stream.started) * 1000
        result = attrs.evolve(result, run_ms=run_ms, logs=stream.logs())
        ex.ran(self.clock(), result=self.live.redactor.redact_result(result))
        ex.extra_spans[-1].attributes.update(stream.attributes())
        ex.span["stream"] = stream.outcome

    async def _shared_admit(self, bucket: str, plan: Plan) -> Decision:
        """The Redis store's limiter; with the ``closed`` fallback, an outage is a 503."""
        assert self.store is not None
        try:
            return await self.store.limiter.check(bucket, plan)
        except StoreUnavailable:
            self.metrics.count_store_unavailable()
            raise HttpError(
                503,
                "store_unavailable",
                "the shared store is unreachable and this project refuses requests meanwhile "
                "(store fallback: closed); retry shortly",
                [("retry-after", "1")],
            ) from None

    # -- every answer ------------------------------------------------------------------------
    def _finish(self, ex: Exchange, status: int, headers: Headers) -> Headers:
        """CORS headers, rate-limit fields and x-request-id, on every answer."""
        if not ex.preflight:
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

    def _record(self, ex: Exchange, status: int) -> None:
        duration_ms = (time.perf_counter() - ex.started_perf) * 1000
        self.metrics.observe_request(ex.function, status, duration_ms / 1000)
        if self.traces.enabled:
            self.traces.record(request_trace(ex, status, duration_ms))

    # -- async invocations -------------------------------------------------------------------
    async def _invoke_queued(self, function: str, invocation: Invocation) -> InvocationResult:
        spec = self.live.routes.by_name(function)
        if spec is None:  # removed by a redeploy: fail the job at once, no retries
            raise UnknownFunction(function)
        fresh = attrs.evolve(invocation, deadline=self.clock() + spec.timeout)
        return await self.invoke(spec, fresh)

    def _on_queue_event(self, event: QueueEvent) -> None:
        self.traces.record_queue_event(event)
        if self.feed.active:
            self.feed.publish(job_event(event))
