"""The gateway's own endpoints under ``/_flux/`` (docs/reference.md, "Gateway endpoints").

``/_flux/health`` answers before authentication (load balancers carry no key). The others
come after authentication and the rate limit: metrics need a key not scoped to functions (a
scoped key is meant for calling its functions only); an async invocation's result can also be
read with a scoped key for that function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from .errors import HttpError
from .exchange import Exchange
from .httpio import JSON, Answer
from .jobs import job_to_json
from .keys import KeyRecord
from .live import LiveState
from .metrics import Metrics
from .queue import JobQueue
from .runtime.pool import PoolManager
from .safeio import shorten
from .tracestore import TraceStore

if TYPE_CHECKING:
    from .store.backend import RedisBackend
    from .store.redis_queue import RedisJobQueue
    from .store.redis_traces import RedisTraceStore

PREFIX = "/_flux/"
HEALTH = "/_flux/health"
METRICS = "/_flux/metrics"
INVOCATIONS = "/_flux/invocations/"
PROMETHEUS = ("content-type", "text/plain; version=0.0.4; charset=utf-8")


def health(live: LiveState, sandbox: str, store: RedisBackend | None = None) -> Answer:
    """``sandbox``: how workers are isolated (docs/sandbox.md), said where monitoring looks;
    ``store``: which store holds the state and whether it answers (docs/redis.md)."""
    payload = {
        "status": "ok",
        "deployment": live.deployment.version,
        "functions": len(live.deployment.functions),
        "sandbox": sandbox,
        "store": store.health_json() if store else {"kind": "files", "status": "ok"},
    }
    return Answer(200, [JSON, ("cache-control", "no-store")], orjson.dumps(payload))


class Endpoints:
    """The authenticated ``/_flux/`` endpoints, reading the gateway's parts."""

    def __init__(
        self,
        metrics: Metrics,
        pool: PoolManager,
        queue: JobQueue | RedisJobQueue,
        traces: TraceStore | RedisTraceStore,
        store: RedisBackend | None = None,
    ) -> None:
        self.metrics = metrics
        self.pool = pool
        self.queue = queue
        self.traces = traces
        self.store = store

    async def answer(self, ex: Exchange, record: KeyRecord) -> Answer:
        ex.span["route"] = f"internal {ex.path}"
        if ex.method != "GET":
            raise HttpError(404, "not_found", f"no function at {ex.method} {shorten(ex.path, 200)}")
        if ex.path == METRICS:
            if record.functions:
                raise HttpError(403, "forbidden", "metrics need a key not scoped to functions")
            text = self.metrics.render(
                workers=self.pool.stats(),
                queue_depth=self.queue.depth(),
                trace_backlog=self.traces.backlog,
                trace_dropped=self.traces.dropped,
                store=self.store.metrics() if self.store else None,
            )
            return Answer(200, [PROMETHEUS], text.encode())
        if ex.path.startswith(INVOCATIONS):
            request_id = ex.path[len(INVOCATIONS) :]
            job = await self.queue.fetch(request_id)
            if job is None or (record.functions and job.function not in record.functions):
                raise HttpError(404, "not_found", f"no async invocation {request_id!r}")
            return Answer(200, [JSON], orjson.dumps(job_to_json(job)))
        raise HttpError(404, "not_found", f"no gateway endpoint at {ex.path}")
