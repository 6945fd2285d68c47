"""Keys/settings documents, traces and the job stream on a real redis-server."""

from __future__ import annotations

import time

import anyio
import coredis
import pytest
from conftest import BOTH_LOOPS
from redisserver import RedisServer

from fluxgw.store.instances import Instances
from fluxgw.store.redis_docs import RedisDocuments
from fluxgw.store.redis_jobs import RedisJobs
from fluxgw.store.redis_traces import RedisTraces
from fluxgw.tracing import (
    AmbiguousPrefix,
    TraceNotFound,
    TracePrefixTooShort,
    TraceRecord,
    trace_to_json,
)

pytestmark = BOTH_LOOPS

PREFIX = "flux:p1:"


async def test_document_updates_are_compare_and_set_and_announced(redis_client) -> None:
    docs = RedisDocuments(redis_client, PREFIX)
    assert await docs.read("keys") == (0, None)
    async with redis_client.pubsub(channels=[docs.channel], ignore_subscribe_messages=True) as sub:
        await docs.update("keys", lambda old: b"[1]")
        with anyio.fail_after(2):
            async for message in sub:
                assert message["data"] in (b"keys:1", "keys:1")
                break
    assert await docs.read("keys") == (1, b"[1]")
    assert await docs.versions() == {"keys": 1}
    # a writer holding a stale version is refused, not applied
    assert await docs.write("keys", b"[stale]", expected=0) == -1
    assert await docs.read("keys") == (1, b"[1]")


async def test_concurrent_updates_lose_nothing(redis: RedisServer) -> None:
    clients = [coredis.Redis(host="127.0.0.1", port=redis.port) for _ in range(4)]

    def append(i: int):
        def change(old: bytes | None) -> bytes:
            items = [] if old is None else old.decode().split(",")
            return ",".join([*filter(None, items), str(i)]).encode()

        return change

    async with clients[0], clients[1], clients[2], clients[3]:
        docs = [RedisDocuments(c, PREFIX) for c in clients]
        async with anyio.create_task_group() as nursery:
            for i in range(40):
                nursery.start_soon(docs[i % 4].update, "keys", append(i))
        _, final = await docs[0].read("keys")
    assert final is not None
    assert sorted(int(x) for x in final.decode().split(",")) == list(range(40))


def trace(rid: str, started: float) -> dict[str, object]:
    record = TraceRecord(rid, started, "GET", "/x", 200, 1.5, "t" * 32, spans=[], logs=[])
    return trace_to_json(record)


async def test_traces_by_id_prefix_and_last_with_a_count_cap(redis_client) -> None:
    traces = RedisTraces(redis_client, PREFIX, max_traces=5)
    now = time.time()
    ids = [f"{i:02d}aa{'0' * 28}" for i in range(8)]
    await traces.write([trace(rid, now + i) for i, rid in enumerate(ids)], [])
    assert [t.request_id[:2] for t in await traces.last(10)] == ["07", "06", "05", "04", "03"]
    with pytest.raises(TraceNotFound):
        await traces.get(ids[0])  # trimmed, record deleted too
    assert (await traces.get("05aa00")).request_id == ids[5]
    with pytest.raises(TracePrefixTooShort):
        await traces.get("05aa0")
    await traces.write([trace(f"abcdef{i}" + "0" * 26, now + 100) for i in (1, 2)], [])
    with pytest.raises(AmbiguousPrefix):
        await traces.get("abcdef")
    line = {"stream": "stdout", "text": "hi", "timestamp": now}
    event = {"state": "succeeded", "spans": [], "logs": [line]}
    await traces.write([], [(ids[7], event)])
    got = await traces.get(ids[7])
    assert got.async_state == "succeeded" and [line.text for line in got.logs] == ["hi"]


async def test_jobs_run_once_per_delivery_and_a_dead_consumer_is_taken_over(redis) -> None:
    a = coredis.Redis(host="127.0.0.1", port=redis.port)
    b = coredis.Redis(host="127.0.0.1", port=redis.port)
    async with a, b:
        jobs_a = RedisJobs(a, PREFIX, takeover_after=0.3)
        jobs_b = RedisJobs(b, PREFIX, takeover_after=0.3)
        await jobs_a.ensure_group()
        await jobs_b.ensure_group()  # idempotent
        for i in range(4):
            await jobs_a.enqueue(f"r{i}", {"state": "queued"})
        got_a = await jobs_a.claim("a", count=2, block_ms=100)
        got_b = await jobs_b.claim("b", count=10, block_ms=100)
        assert sorted(r for _, r in got_a + got_b) == ["r0", "r1", "r2", "r3"]
        assert len(got_a) == 2 and len(got_b) == 2
        for entry, _ in got_b:
            await jobs_b.ack(entry)
        # "a" dies holding two entries: after takeover_after, b claims them
        assert await jobs_b.take_over("b") == []
        with anyio.fail_after(3):
            while not (taken := await jobs_b.take_over("b")):
                await anyio.sleep(0.05)
        assert sorted(r for _, r in taken) == sorted(r for _, r in got_a)
        # a retry waits in the delayed set until due, then is delivered again
        entry, rid = taken[0]
        await jobs_b.defer(entry, rid, due_at=time.time() + 0.2)
        assert await jobs_b.promote_due(time.time()) == 0
        with anyio.fail_after(3):
            while not await jobs_b.promote_due(time.time()):
                await anyio.sleep(0.05)
        again = await jobs_b.claim("b", count=10, block_ms=100)
        assert [r for _, r in again] == [rid]
        assert (await jobs_a.get(rid)) == {"state": "queued"}


async def test_instances_count_the_live_gateways(redis) -> None:
    clients = [coredis.Redis(host="127.0.0.1", port=redis.port) for _ in range(3)]
    async with clients[0], clients[1], clients[2]:
        members = [Instances(c, PREFIX, f"gw{i}") for i, c in enumerate(clients)]
        counts = [await m.beat() for m in members]
        assert counts == [1, 2, 3]
        await members[2].leave()
        assert await members[0].beat() == 2
