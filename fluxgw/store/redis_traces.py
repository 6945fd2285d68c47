"""Traces in Redis, readable by ``flux trace`` whichever gateway served the request.

Layout under the project's prefix (docs/redis.md):

- ``trace:<request id>``: the trace as JSON (the same form as ``flux trace --json``), with a
  time-to-live (the retention);
- ``traces``: a sorted set of request ids by start time, trimmed to ``max_traces``, for
  ``--last N``;
- ``trace-ids``: a sorted set of the same ids at score 0, for prefix lookup with
  ``ZRANGEBYLEX`` (``flux trace 3fa9c1``), trimmed with it.

Writes are batched by the caller (the trace writer), one pipeline per batch; a trace is
capped in size by the writer before it gets here, so Redis memory is bounded by
``max_traces`` times that cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from coredis import PureToken

TRIM_SCRIPT = """
local n = redis.call('ZCARD', KEYS[1])
local excess = n - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local old = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', ARGV[2] .. id)
end
return excess
"""


class RedisTraces:
    def __init__(
        self, client: Any, prefix: str, *, max_traces: int = 100_000, ttl: float = 7 * 86_400
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_traces = max_traces
        self.ttl_ms = int(ttl * 1000)
        self._by_time = f"{prefix}traces"
        self._ids = f"{prefix}trace-ids"
        self._trim = client.register_script(TRIM_SCRIPT)

    def _key(self, request_id: str) -> str:
        return f"{self.prefix}trace:{request_id}"

    async def put_many(self, traces: Iterable[dict[str, Any]]) -> None:
        """Store traces (``trace_to_json`` form); one round trip for the batch."""
        async with self.client.pipeline(transaction=False) as pipe:
            for trace in traces:
                rid = trace["request_id"]
                pipe.set(self._key(rid), orjson.dumps(trace), px=self.ttl_ms)
                pipe.zadd(self._by_time, {rid: float(trace["started_at"])})
                pipe.zadd(self._ids, {rid: 0.0})
        await self._trim(
            keys=[self._by_time, self._ids], args=[self.max_traces, f"{self.prefix}trace:"]
        )

    async def update(self, request_id: str, change: dict[str, Any]) -> None:
        """Merge ``change`` into a stored trace (an async job's state moving on)."""
        raw = await self.client.get(self._key(request_id))
        if raw is None:
            return
        trace = orjson.loads(raw)
        trace.update(change)
        await self.client.set(self._key(request_id), orjson.dumps(trace), keepttl=True)

    async def get(self, request_id: str) -> dict[str, Any] | None:
        raw = await self.client.get(self._key(request_id))
        return None if raw is None else orjson.loads(raw)

    async def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Request ids starting with ``prefix`` (hex, lower-case), at most ``limit``."""
        found = await self.client.zrange(
            self._ids, f"[{prefix}", f"[{prefix}\xff", sortby=PureToken.BYLEX, offset=0, count=limit
        )
        return [_text(rid) for rid in found]

    async def last(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` most recent traces, newest first."""
        ids = await self.client.zrange(self._by_time, 0, n - 1, rev=True)
        if not ids:
            return []
        raws = await self.client.mget([self._key(_text(rid)) for rid in ids])
        return [orjson.loads(raw) for raw in raws if raw is not None]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
