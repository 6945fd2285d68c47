"""The Redis limiter against a real redis-server: same answers as the in-memory GCRA, exact
under concurrency from several clients, and the outage fallbacks."""

from __future__ import annotations

import logging
import time

import anyio
import coredis
import pytest
from conftest import BOTH_LOOPS
from redisserver import RedisServer

from fluxgw.ratelimit import PLANS, GcraLimiter, Plan
from fluxgw.store.health import StoreHealth
from fluxgw.store.redis_limiter import RedisLimiter
from fluxgw.store.shared_limiter import SharedLimiter, StoreUnavailable, local_share

pytestmark = BOTH_LOOPS


async def test_answers_match_the_in_memory_limiter(redis_client) -> None:
    plan = Plan("slow", 1, 5)  # one request a minute: nothing refills during the test
    remote = RedisLimiter(redis_client, "flux:t:")
    local = GcraLimiter(lambda: 1_000.0)
    for _ in range(7):
        got = await remote.check("k", plan)
        want = local.check("k", plan)
        assert (got.allowed, got.limit, got.remaining) == (want.allowed, want.limit, want.remaining)
        # Redis' clock moves during the test, the frozen one does not: at most 1 s apart.
        assert abs(got.retry_after - want.retry_after) <= 1
        assert abs(got.reset - want.reset) <= 1
    assert [d.allowed for d in [await remote.check("k", plan)]] == [False]
    # another bucket is untouched
    assert (await remote.check("other", plan)).remaining == 4


async def test_three_clients_admit_exactly_one_burst(redis: RedisServer) -> None:
    plan = PLANS["free"]
    clients = [coredis.Redis(host="127.0.0.1", port=redis.port, stream_timeout=5) for _ in range(3)]
    admitted = 0
    started = anyio.current_time()

    async def one(limiter: RedisLimiter) -> None:
        nonlocal admitted
        if (await limiter.check("shared-key", plan)).allowed:
            admitted += 1

    async with clients[0], clients[1], clients[2]:
        limiters = [RedisLimiter(c, "flux:t:") for c in clients]
        async with anyio.create_task_group() as nursery:
            for i in range(300):
                nursery.start_soon(one, limiters[i % 3])
    elapsed = anyio.current_time() - started
    # 120 at once, plus at most one per second of refill while the test ran
    assert 120 <= admitted <= 120 + int(elapsed) + 1


async def test_restore_carries_a_drained_bucket_over(redis_client) -> None:
    plan = PLANS["free"]
    memory = GcraLimiter(time.time)
    for _ in range(120):
        memory.check("k", plan)
    remote = RedisLimiter(redis_client, "flux:t:")
    await remote.restore(redis_client, memory.snapshot())
    decision = await remote.check("k", plan)
    assert not decision.allowed and decision.retry_after >= 1


def test_local_share_divides_the_plan() -> None:
    plan = PLANS["free"]
    assert local_share(plan, 1) is plan
    share = local_share(plan, 3)
    assert (share.rate_per_minute, share.burst) == (20, 40)


async def test_outage_local_fallback_then_recovery(redis: RedisServer, caplog) -> None:
    caplog.set_level(logging.WARNING, "fluxgw.store")
    client = coredis.Redis(
        host="127.0.0.1", port=redis.port, stream_timeout=0.2, connect_timeout=0.2
    )
    plan = PLANS["free"]
    async with client:
        health = StoreHealth(anyio.current_time, probe_interval=0.5)
        shared = SharedLimiter(
            RedisLimiter(client, "flux:t:"),
            clock=time.time,
            instances=lambda: 2,
            health=health,
        )
        assert (await shared.check("k", plan)).allowed and health.up
        redis.stop()
        answers = [await shared.check("k", plan) for _ in range(100)]
        assert not health.up and health.outages == 1
        # the local share is half the plan: 60 at once for this instance
        assert sum(d.allowed for d in answers) == 60
        redis.start()
        with anyio.fail_after(2):
            while not health.up:
                await shared.check("k", plan)
                await anyio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "fluxgw.store"]
    assert sum("unreachable" in line for line in lines) == 1
    assert sum("reachable again" in line for line in lines) == 1


async def test_outage_closed_fallback_refuses(redis: RedisServer) -> None:
    client = coredis.Redis(
        host="127.0.0.1", port=redis.port, stream_timeout=0.2, connect_timeout=0.2
    )
    async with client:
        shared = SharedLimiter(RedisLimiter(client, "flux:t:"), clock=time.time, fallback="closed")
        redis.stop()
        with pytest.raises(StoreUnavailable):
            await shared.check("k", PLANS["free"])
