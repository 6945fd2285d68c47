"""Traces in Redis, readable by ``flux trace`` whichever gateway served the request.

Layout under the project's prefix (docs/redis.md):

- ``trace:<request id>``: the trace as JSON (the form of ``flux trace --json``), with a
  time-to-live (the retention, 7 days);
- ``trace:<request id>:events``: a list of later additions (an async job's state, its queue,
  runtime and function spans and log lines), same time-to-live;
- ``traces``: a sorted set of request ids by start time, trimmed to ``max_traces``, for
  ``--last N``; ``trace-ids``: the same ids at score 0, for prefix lookup (``ZRANGE BYLEX``).

:class:`RedisTraceStore` has the interface of the files store's
:class:`~fluxgw.tracestore.TraceStore`: ``record`` and ``update_async_state`` only append to a
bounded buffer (O(1), never block a request); a background task writes the buffer every
``flush_interval`` as one pipeline. When Redis is unreachable the batch is dropped and counted
(``dropped``), like a full disk for the files store: traces are diagnostics, never a reason to
slow or refuse a request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc
import orjson
from coredis import PureToken

from ..tracebuffer import PendingTraces
from ..tracing import (
    AmbiguousPrefix,
    Span,
    TraceNotFound,
    TracePrefixTooShort,
    TraceRecord,
    log_from_json,
    trace_to_json,
)
from .config import StoreConfig

log = logging.getLogger("fluxgw.store")

MIN_PREFIX = 6
MAX_PENDING = 50_000
RETENTION_S = 7 * 86_400
T = TypeVar("T")

TRIM_SCRIPT = """
local n = redis.call('ZCARD', KEYS[1])
local excess = n - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local old = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', ARGV[2] .. id, ARGV[2] .. id .. ':events')
end
return excess
"""


class RedisTraces:
    """The Redis side: batched writes and the readers ``flux trace`` uses."""

    def __init__(self, client: Any, prefix: str, *, max_traces: int = 100_000) -> None:
        self.client = client
        self.prefix = prefix
        self.max_traces = max_traces
        self.ttl_ms = RETENTION_S * 1000
        self._by_time = f"{prefix}traces"
        self._ids = f"{prefix}trace-ids"
        self._trim = client.register_script(TRIM_SCRIPT)

    def _key(self, request_id: str) -> str:
        return f"{self.prefix}trace:{request_id}"

    async def write(
        self, traces: Sequence[dict[str, Any]], events: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        """Store traces and events: one round trip for the batch, then a trim."""
        async with self.client.pipeline(transaction=False) as pipe:
            for trace in traces:
                rid = trace["request_id"]
                pipe.set(self._key(rid), orjson.dumps(trace), px=self.ttl_ms)
                pipe.zadd(self._by_time, {rid: float(trace["started_at"])})
                pipe.zadd(self._ids, {rid: 0.0})
            for rid, event in events:
                pipe.rpush(self._key(rid) + ":events", [orjson.dumps(event)])
                pipe.pexpire(self._key(rid) + ":events", self.ttl_ms)
        if traces:
            await self._trim(
                keys=[self._by_time, self._ids], args=[self.max_traces, f"{self.prefix}trace:"]
            )

    async def get(self, id_or_prefix: str) -> TraceRecord:
        """The trace with that id, or the only one starting with that prefix (>= 6 chars)."""
        prefix = id_or_prefix.strip().lower()
        if len(prefix) < MIN_PREFIX:
            raise TracePrefixTooShort(
                f"trace id prefix {id_or_prefix!r} is too short: give at least "
                f"{MIN_PREFIX} characters"
            )
        ids = [
            _text(rid)
            for rid in await self.client.zrange(
                self._ids, f"[{prefix}", f"[{prefix}\xff", sortby=PureToken.BYLEX, offset=0, count=6
            )
        ]
        if prefix in ids:
            ids = [prefix]
        if not ids:
            raise TraceNotFound(
                f"no trace {id_or_prefix!r}: it may be older than the retention, "
                "or the id is mistyped"
            )
        records = [r for r in [await self._load(rid, events=len(ids) == 1) for rid in ids] if r]
        if len(records) > 1:
            raise AmbiguousPrefix(
                prefix,
                [(r.request_id, r.started_at, r.method, r.path, r.status) for r in records],
            )
        if not records:
            raise TraceNotFound(f"no trace {id_or_prefix!r} (expired)")
        return records[0]

    async def last(self, n: int) -> list[TraceRecord]:
        """The ``n`` newest traces, newest first."""
        if n <= 0:
            return []
        ids = await self.client.zrange(self._by_time, 0, n - 1, rev=True)
        if not ids:
            return []
        raws = await self.client.mget([self._key(_text(rid)) for rid in ids])
        return [_record(orjson.loads(raw)) for raw in raws if raw is not None]

    async def _load(self, request_id: str, *, events: bool) -> TraceRecord | None:
        raw = await self.client.get(self._key(request_id))
        if raw is None:
            return None
        record = _record(orjson.loads(raw))
        if events:
            for item in await self.client.lrange(self._key(request_id) + ":events", 0, -1):
                event = orjson.loads(item)
                if event.get("state") is not None:
                    record.async_state = event["state"]
                record.spans.extend(Span.from_json(s) for s in event.get("spans", ()))
                record.logs.extend(log_from_json(line) for line in event.get("logs", ()))
        return record


class RedisTraceStore(PendingTraces[tuple[str, Any]]):
    """The gateway's trace writer on Redis (the interface of ``TraceStore``)."""

    def __init__(
        self,
        traces: Callable[[], RedisTraces | None],
        *,
        enabled: bool = True,
        flush_interval: float = 0.1,
        clock: Callable[[], float],
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._traces = traces  # None until the store is connected
        self.flush_interval = flush_interval
        super().__init__(enabled=enabled, max_pending=max_pending, clock=clock)

    def record(self, trace: TraceRecord) -> None:
        if self.enabled:
            self._push(("trace", trace_to_json(trace)))

    def _event_item(
        self, request_id: str, at: float, state: str | None, spans: list[Any], logs: list[Any]
    ) -> tuple[str, Any]:
        return ("event", (request_id, {"at": at, "state": state, "spans": spans, "logs": logs}))

    async def read(self, id_or_prefix: str) -> TraceRecord:
        """One trace, from any instance (the dashboard)."""
        return await self._reader().get(id_or_prefix)

    async def read_last(self, n: int) -> list[TraceRecord]:
        return await self._reader().last(n)

    def _reader(self) -> RedisTraces:
        traces = self._traces()
        if traces is None:
            raise TraceNotFound("the shared store is not connected")
        return traces

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.flush_interval)
                await self.flush()
        finally:
            with anyio.move_on_after(2, shield=True):
                await self.flush()

    async def flush(self) -> None:
        traces_store = self._traces()
        if not self._pending:
            return
        batch = list(self._pending)
        self._pending.clear()
        self._writing = len(batch)
        try:
            if traces_store is None:
                raise ConnectionError("the store is not connected")
            with anyio.fail_after(2):
                await traces_store.write(
                    [item for kind, item in batch if kind == "trace"],
                    [item for kind, item in batch if kind == "event"],
                )
        except Exception as exc:  # Redis away: lose this batch, not the gateway
            log.debug("trace writer: %d traces not written: %s", len(batch), exc)
            self._dropped += len(batch)
        finally:
            self._writing = 0


def _record(data: dict[str, Any]) -> TraceRecord:
    return TraceRecord(
        request_id=data["request_id"],
        started_at=data["started_at"],
        method=data["method"],
        path=data["path"],
        status=data["status"],
        duration_ms=data["duration_ms"],
        trace_id=data.get("trace_id", ""),
        function=data.get("function"),
        key_name=data.get("key_name"),
        client_request_id=data.get("client_request_id"),
        traceparent_in=data.get("traceparent_in"),
        async_state=data.get("async_state"),
        spans=[Span.from_json(s) for s in data.get("spans", ())],
        logs=[log_from_json(line) for line in data.get("logs", ())],
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["RedisTraceStore", "RedisTraces"]


class RedisTraceReader:
    """``get``/``last`` for `flux trace` (synchronous): one short connection per call."""

    def __init__(self, config: StoreConfig) -> None:
        assert config.redis is not None
        self.config = config

    def _run(self, operation: Callable[[RedisTraces], Awaitable[T]]) -> T:
        import coredis

        address = self.config.redis
        assert address is not None

        async def call() -> T:
            client = coredis.Redis(
                host=address.host,
                port=address.port,
                db=address.db,
                password=address.password,
                connect_timeout=5,
                stream_timeout=5,
            )
            async with client:
                return await operation(RedisTraces(client, self.config.prefix))

        try:
            return anyio.run(call)
        except BaseExceptionGroup as group:  # raised inside the client's task group
            raise group.exceptions[0] from None

    def get(self, id_or_prefix: str) -> TraceRecord:
        return self._run(lambda traces: traces.get(id_or_prefix))

    def last(self, n: int) -> list[TraceRecord]:
        return self._run(lambda traces: traces.last(n))
