"""A gateway's connection to the Redis store and the background work that keeps it current.

One :class:`RedisBackend` per gateway process (docs/redis.md). It owns the coredis client and
hands out the pieces the pipeline uses: the shared limiter (with its outage fallback), the
trace writer, the job stream, and the documents cache through which the gateway's live reload
reads keys and settings. Its :meth:`run` task, started first in the gateway's task group:

- subscribes to the project's change channel and refreshes the documents cache on a notice;
- resyncs every second (one ``HGETALL`` of the versions), so a notice lost during a
  reconnect cannot keep a revoked key alive for more than a second;
- beats this instance's heartbeat every second (the live count sizes the local fallback).

Before serving, :meth:`prime` fills the documents cache (synchronously, from the thread that
loads the gateway's state), so the first request already sees the shared keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from ..errors import FluxError
from ..state import SHARED_DOCUMENTS
from .config import StoreConfig
from .documents import CachedDocuments, RedisCommandDocuments
from .health import StoreHealth
from .instances import HEARTBEAT, Instances
from .redis_docs import RedisDocuments
from .redis_jobs import RedisJobs
from .redis_limiter import RedisLimiter
from .redis_queue import RedisJobQueue
from .redis_traces import RedisTraces, RedisTraceStore
from .shared_limiter import SharedLimiter, report_failure, report_success

log = logging.getLogger("fluxgw.store")
# coredis reports each retry at INFO; the store's own outage lines say what matters, once.
logging.getLogger("coredis").setLevel(logging.WARNING)

RESYNC_INTERVAL = 1.0  # s: the bound on how long a missed change notice can matter
CALL_TIMEOUT = 1.0  # s: coredis' own socket timeouts, as the limiter's budget


class WritingCache(CachedDocuments):
    """The gateway's documents: memory for reads; a write (first start of a project whose
    settings are not in Redis yet) goes to Redis and into the cache."""

    def __init__(self, config: StoreConfig) -> None:
        assert config.redis is not None
        super().__init__(config.redis.display)
        self._direct = RedisCommandDocuments(config.redis, config.prefix)

    def write(self, name: str, payload: bytes, *, expected: int) -> int:
        version = self._direct.write(name, payload, expected=expected)
        if version >= 0:
            self.documents[name] = (version, payload)
        return version


class RedisBackend:
    def __init__(
        self,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
        tracing: bool = True,
        instance_id: str | None = None,
    ) -> None:
        import coredis
        from coredis.retry import NoRetryPolicy

        assert config.redis is not None
        self.config = config
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:" + (
            secrets.token_hex(3)
        )
        address = config.redis
        self.client = coredis.Redis(
            host=address.host,
            port=address.port,
            db=address.db,
            password=address.password,
            connect_timeout=CALL_TIMEOUT,
            stream_timeout=CALL_TIMEOUT,
            # No silent retries: each caller has its own budget, and a failure must reach
            # the store's health (fallback, log, metrics) at once.
            retry_policy=NoRetryPolicy(),
        )
        self.health = StoreHealth(time.monotonic)
        self.cache = WritingCache(config)
        self.documents = RedisDocuments(self.client, config.prefix)
        self.instances = Instances(self.client, config.prefix, self.instance_id)
        self.limiter = SharedLimiter(
            RedisLimiter(self.client, config.prefix),
            clock=clock,
            fallback=config.fallback,
            instances=lambda: self.instances.alive,
            health=self.health,
        )
        self._traces = RedisTraces(self.client, config.prefix)
        self._connected = False
        self._lost: set[str] = set()
        self.traces = RedisTraceStore(
            lambda: self._traces if self._connected else None, enabled=tracing, clock=clock
        )
        self.jobs = RedisJobs(self.client, config.prefix)
        self.queue = RedisJobQueue(self.jobs, self.instance_id, clock=clock)

    # -- before serving (blocking, from a thread) -------------------------------------------
    def prime(self) -> None:
        """Fill the documents cache from Redis; FluxError if Redis cannot be reached."""
        direct = RedisCommandDocuments(self.config.redis, self.config.prefix)  # type: ignore[arg-type]
        try:
            for name in SHARED_DOCUMENTS:
                self.cache.documents[name] = direct.read(name)
        except Exception as exc:
            raise FluxError(f"cannot start: the shared store is unreachable ({exc})") from None

    # -- background -------------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with self.client:
            self._connected = True
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._listen)
                    tasks.start_soon(self._resync_loop)
                    tasks.start_soon(self._heartbeat_loop)
                    await tasks.start(self.traces.run)
                    task_status.started()
            finally:
                self._connected = False
                with anyio.move_on_after(1, shield=True), contextlib.suppress(Exception):
                    await self.instances.leave()  # best effort: others also age it out

    async def refresh(self) -> None:
        """Re-read every document whose version moved (one round trip when none did)."""
        versions = await self.documents.versions()
        for name in SHARED_DOCUMENTS:
            if versions.get(name, 0) == self.cache.version(name):
                continue
            version, payload = await self.documents.read(name)
            if payload is None and self.cache.read(name)[1] is not None:
                # Redis lost the document (restarted without persistence, flushed): keep
                # serving the last known keys rather than refusing every caller.
                # Version 0 (what Redis now says), so the next write there, at version 1,
                # is seen as a change even if the lost copy also had version 1.
                self.cache.documents[name] = (0, self.cache.read(name)[1])
                if name not in self._lost:
                    self._lost.add(name)
                    log.warning(
                        "the shared store no longer holds %s; keeping the last known copy "
                        "(write it again with the flux command)",
                        name,
                    )
                continue
            self._lost.discard(name)
            self.cache.documents[name] = (version, payload)

    async def _listen(self) -> None:
        """Change notices: refresh at once. coredis reconnects by itself after a failure."""
        while True:
            try:
                async with self.client.pubsub(
                    channels=[self.documents.channel], ignore_subscribe_messages=True
                ) as notices:
                    async for _notice in notices:
                        await self.refresh()
            except Exception as exc:  # the resync covers what is missed meanwhile
                log.debug("change notices interrupted: %s", exc)
                await anyio.sleep(RESYNC_INTERVAL)

    async def _resync_loop(self) -> None:
        while True:
            await anyio.sleep(RESYNC_INTERVAL)
            try:
                with anyio.fail_after(RESYNC_INTERVAL):
                    await self.refresh()
            except Exception as exc:
                report_failure(self.health, exc, self.config.fallback)
            else:
                report_success(self.health)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                with anyio.fail_after(HEARTBEAT):
                    await self.instances.beat()
            except Exception as exc:
                log.debug("heartbeat failed: %s", exc)
            await anyio.sleep(HEARTBEAT)

    def metrics(self) -> dict[str, int]:
        health = self.health
        return {"up": int(health.up), "outages": health.outages, "failures": health.failures}

    def health_json(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "url": self.config.redis.display if self.config.redis else "",
            "instances": self.instances.alive,
            **self.health.as_json(),
        }
