"""The async-job queue on Redis Streams, shared by every gateway of a project.

Layout under the project's prefix (docs/redis.md):

- ``job:<request id>``: the job record as JSON (state, attempts, result or error), written by
  whichever instance moves it on, readable by any (``GET /_flux/invocations/ID``);
- ``jobs``: a stream of ``{id: request id}`` entries with one consumer group, ``gateways``;
  each instance reads as its own consumer, so an entry is delivered to one instance at a time;
- ``jobs-delayed``: a sorted set of request ids by the time their retry is due (backoff);
  :meth:`RedisJobs.promote_due` moves due ids back onto the stream atomically.

At least once, across instances: an entry is acknowledged only when its job has reached a
final state or been scheduled for retry. An instance refreshes the idle time of the entries
it is running (:meth:`keep_alive`) every few seconds; an entry idle longer than
``takeover_after`` belongs to an instance that died, and :meth:`take_over` claims it
(``XAUTOCLAIM``), so its job runs again on a live instance.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from coredis.exceptions import StreamDuplicateConsumerGroupError

GROUP = "gateways"

PROMOTE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'id', id)
end
return #due
"""


class RedisJobs:
    def __init__(self, client: Any, prefix: str, *, takeover_after: float = 20.0) -> None:
        self.client = client
        self.prefix = prefix
        self.stream = f"{prefix}jobs"
        self.delayed = f"{prefix}jobs-delayed"
        self.takeover_after_ms = int(takeover_after * 1000)
        self._promote = client.register_script(PROMOTE_SCRIPT)

    def key(self, request_id: str) -> str:
        return f"{self.prefix}job:{request_id}"

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group once (idempotent)."""
        with contextlib.suppress(StreamDuplicateConsumerGroupError):  # made by another one
            await self.client.xgroup_create(self.stream, GROUP, "0", mkstream=True)

    async def enqueue(self, request_id: str, job: dict[str, Any]) -> None:
        """Store the job and queue it, atomically (both or neither)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key(request_id), orjson.dumps(job))
            pipe.xadd(self.stream, {"id": request_id})

    async def get(self, request_id: str) -> dict[str, Any] | None:
        raw = await self.client.get(self.key(request_id))
        return None if raw is None else orjson.loads(raw)

    async def put(self, request_id: str, job: dict[str, Any]) -> None:
        await self.client.set(self.key(request_id), orjson.dumps(job))

    async def claim(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, str]]:
        """New entries for ``consumer``: ``[(entry id, request id)]``; waits up to
        ``block_ms`` when there are none."""
        reply = await self.client.xreadgroup(
            GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        # one stream asked, so at most one answer (its name comes back as bytes)
        return _entries(next(iter(reply.values()), ()) if reply else ())

    async def ack(self, entry_id: str) -> None:
        await self.client.xack(self.stream, GROUP, [entry_id])

    async def defer(self, entry_id: str, request_id: str, due_at: float) -> None:
        """Retry later: the id waits in the delayed set; this delivery is acknowledged."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.delayed, {request_id: due_at})
            pipe.xack(self.stream, GROUP, [entry_id])

    async def promote_due(self, now: float) -> int:
        """Move retries whose time has come back onto the stream; how many moved."""
        return int(await self._promote(keys=[self.delayed, self.stream], args=[now]))

    async def keep_alive(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries this instance is still running."""
        if entry_ids:
            await self.client.xclaim(self.stream, GROUP, consumer, 0, entry_ids, justid=True)

    async def take_over(self, consumer: str, count: int = 50) -> list[tuple[str, str]]:
        """Entries idle past ``takeover_after`` (their instance died), now ``consumer``'s."""
        reply = await self.client.xautoclaim(
            self.stream, GROUP, consumer, self.takeover_after_ms, "0-0", count=count
        )
        return _entries(reply[1])

    async def depth(self) -> int:
        """Jobs waiting or running across all instances (metrics)."""
        info = await self.client.xpending(self.stream, GROUP)
        pending = int(info.pending) if info else 0
        lag = await self._lag()
        return pending + lag + int(await self.client.zcard(self.delayed))

    async def _lag(self) -> int:
        for group in await self.client.xinfo_groups(self.stream):
            name = group.get(b"name", group.get("name"))
            if _text(name) == GROUP:
                lag = group.get(b"lag", group.get("lag"))
                return int(lag or 0)
        return 0


def _entries(entries: Any) -> list[tuple[str, str]]:
    found = []
    for entry in entries:
        fields = entry.field_values
        rid = fields.get(b"id", fields.get("id"))
        if rid is not None:
            found.append((_text(entry.identifier), _text(rid)))
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
