"""Which gateways of a project are alive: heartbeats in one sorted set, timed by Redis.

Each instance writes its id with the Redis server's time every ``HEARTBEAT`` seconds; an
instance is alive while its last beat is younger than ``ALIVE_FOR``. The count sizes the
local fallback limiter during an outage (the plan divided by the instances last seen alive,
docs/redis.md), and ``/_flux/health`` lists it.
"""

from __future__ import annotations

from typing import Any

HEARTBEAT = 1.0  # s between beats
ALIVE_FOR = 5.0  # s without a beat before an instance counts as gone

BEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]) * 10)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
"""


class Instances:
    def __init__(self, client: Any, prefix: str, instance_id: str) -> None:
        self.key = f"{prefix}instances"
        self.instance_id = instance_id
        self.alive = 1  # last count seen; this instance at least
        self._beat = client.register_script(BEAT_SCRIPT)
        self._client = client

    async def beat(self) -> int:
        """Record this instance alive; returns (and remembers) how many are alive."""
        self.alive = max(
            1, int(await self._beat(keys=[self.key], args=[self.instance_id, ALIVE_FOR]))
        )
        return self.alive

    async def leave(self) -> None:
        """A clean stop: the others stop counting this instance at once."""
        await self._client.zrem(self.key, [self.instance_id])
