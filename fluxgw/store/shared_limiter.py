"""Rate limits shared by several gateways, and what they do while Redis is away.

:class:`SharedLimiter` asks the Redis limiter (exact across instances) within a short budget.
When Redis does not answer in time, or at all, the request is decided by the configured
fallback (``--store-fallback``, docs/redis.md), never by a 500:

- ``local`` (default): a limiter in this process at the plan's rate and burst divided by the
  number of instances last seen, so N gateways together stay near one plan's envelope;
- ``closed``: :class:`StoreUnavailable` (the gateway answers ``503 store_unavailable``).

Decisions taken locally during an outage are not written back to Redis when it returns: the
shared bucket resumes from its last stored state (documented trade-off: an outage can give a
client up to one extra local burst, never a permanent gap).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import anyio

from ..ratelimit import Decision, GcraLimiter, Plan
from .health import StoreHealth
from .redis_limiter import RedisLimiter

log = logging.getLogger("fluxgw.store")

Fallback = Literal["local", "closed"]
STORE_BUDGET = 1.0  # s: a Redis call slower than this counts as a failure (docs/redis.md)


class StoreUnavailable(Exception):
    """The shared store cannot answer and the fallback is ``closed``."""


def local_share(plan: Plan, instances: int) -> Plan:
    """The plan one of ``instances`` gateways enforces alone during an outage."""
    n = max(1, instances)
    if n == 1:
        return plan
    return Plan(f"{plan.name}", max(1, plan.rate_per_minute // n), max(1, plan.burst // n))


def report_failure(health: StoreHealth, exc: BaseException, fallback: Fallback) -> None:
    """Record a failed store call; one log line when it starts an outage (numbered, so each
    outage is its own line even where identical lines are shown once)."""
    if health.failed(f"{type(exc).__name__}: {exc}"):
        how = "locally" if fallback == "local" else "closed (503 store_unavailable)"
        log.warning(
            "shared store unreachable (outage %d: %s); deciding limits %s until it returns",
            health.outages,
            health.last_error,
            how,
        )


def report_success(health: StoreHealth) -> None:
    """Record a successful store call; one log line when it ends an outage."""
    if health.succeeded():
        log.warning(
            "shared store reachable again (outage %d over); limits are shared and exact",
            health.outages,
        )


class SharedLimiter:
    def __init__(
        self,
        remote: RedisLimiter,
        *,
        clock: Callable[[], float],
        fallback: Fallback = "local",
        instances: Callable[[], int] = lambda: 1,
        budget: float = STORE_BUDGET,
        health: StoreHealth | None = None,
    ) -> None:
        self.remote = remote
        self.fallback = fallback
        self.instances = instances
        self.budget = budget
        self.health = health or StoreHealth(clock)
        self.local = GcraLimiter(clock)
        self._shares: dict[tuple[Plan, int], Plan] = {}

    async def check(self, bucket_id: str, plan: Plan) -> Decision:
        if self.health.should_try():
            try:
                with anyio.fail_after(self.budget):
                    decision = await self.remote.check(bucket_id, plan)
            except Exception as exc:  # any store failure is an outage
                report_failure(self.health, exc, self.fallback)
            else:
                report_success(self.health)
                return decision
        if self.fallback == "closed":
            raise StoreUnavailable("the shared store is unreachable")
        instances = self.instances()
        share = self._shares.get((plan, instances))
        if share is None:
            share = self._shares[(plan, instances)] = local_share(plan, instances)
        return self.local.check(bucket_id, share)
