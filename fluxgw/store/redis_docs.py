"""Keys and settings documents in Redis, with change notices for every gateway.

The Redis store keeps the same JSON documents the files store keeps in ``.flux/`` (the keys
list, the project settings), so one validating reader serves both stores and moving a project
between stores is a copy (docs/redis.md). Each document has a version in one hash; a write is
a compare-and-set on that version (one Lua script: no lost update between two ``flux``
commands), bumps it and publishes ``name:version`` on the project's channel.

Gateways learn of changes two ways: the published notice (milliseconds) and a resync that
reads the versions hash every second, so a notice lost while a gateway was reconnecting
cannot leave a revoked key alive for more than a second.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio

CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], ARGV[3])
local version = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ':' .. version)
return version
"""


class ConcurrentUpdate(Exception):
    """Another writer kept changing the document; the update was not applied."""


class RedisDocuments:
    """``read``/``update`` named JSON documents of one project under ``prefix``."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}changes"
        self._versions_key = f"{prefix}versions"
        self._cas = client.register_script(CAS_SCRIPT)

    def _doc_key(self, name: str) -> str:
        return f"{self.prefix}doc:{name}"

    async def versions(self) -> dict[str, int]:
        """Every document's version: one round trip (the resync's cheap check)."""
        raw = await self.client.hgetall(self._versions_key)
        return {_text(name): int(value) for name, value in raw.items()}

    async def read(self, name: str) -> tuple[int, bytes | None]:
        """``(version, payload)``; version 0 and None for a document never written."""
        async with self.client.pipeline(transaction=True) as pipe:  # runs on exit
            version = pipe.hget(self._versions_key, name)
            payload = pipe.get(self._doc_key(name))
        return int(await version or 0), _bytes(await payload)

    async def write(self, name: str, payload: bytes, *, expected: int) -> int:
        """Store ``payload`` if the version is still ``expected``; the new version, or -1."""
        return int(
            await self._cas(
                keys=[self._doc_key(name), self._versions_key],
                args=[name, expected, payload, self.channel],
            )
        )

    async def update(
        self, name: str, change: Callable[[bytes | None], bytes], *, attempts: int = 20
    ) -> bytes:
        """Read, ``change``, write back; retried while another writer got in between."""
        for attempt in range(attempts):
            version, payload = await self.read(name)
            new = change(payload)
            if await self.write(name, new, expected=version) >= 0:
                return new
            # Lost the race: back off a little (jittered) so racing writers spread out.
            await anyio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise ConcurrentUpdate(f"{name} kept changing under {attempts} attempts")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()
