"""GCRA on Redis: one atomic Lua script per decision, timed by the server's own clock.

The script is :meth:`fluxgw.ratelimit.GcraLimiter.check` line for line, so a key gets the same
answers and the same ``RateLimit`` fields whichever store holds its bucket (docs/redis.md).
Three choices make it exact across any number of gateways:

- **one script, one round trip**: read, decide and write happen inside Redis, which runs a
  script atomically; no WATCH/MULTI retry loop, no lost update between two gateways;
- **Redis ``TIME``**: gateways' clocks never enter the decision, so two machines whose clocks
  differ by seconds still share one bucket exactly;
- **integer microseconds**: Lua numbers are doubles, exact up to 2**53 µs (year 2255), and the
  theoretical arrival time is written with ``%.0f`` so no digit is lost to ``tostring``.

A bucket key expires once it is full again (its TAT is in the past), so Redis holds only keys
that are actually limited, like the in-memory limiter's snapshot.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..ratelimit import Decision, Plan

GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
elseif tat - now > window then
  tat = now + window
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil(window / 1000) + 1)
end
local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead <= window then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  return {1, math.floor((window - ahead) / interval), 0, math.ceil(ahead / 1000000)}
end
local retry_after = math.ceil((ahead - window) / 1000000)
if retry_after < 1 then retry_after = 1 end
ahead = tat - now
return {0, math.floor((window - ahead) / interval), retry_after, math.ceil(ahead / 1000000)}
"""


class ScriptRunner(Protocol):
    """What the limiter needs of a coredis script: ``await script(keys=[...], args=[...])``."""

    def __call__(self, *, keys: list[str], args: list[Any]) -> Any: ...


class RedisLimiter:
    """Per-bucket GCRA state in Redis under ``<prefix>rl:<bucket id>``.

    ``client`` is a connected ``coredis.Redis``; the script is registered once and sent by its
    SHA (coredis re-sends the source when a restarted Redis answers NOSCRIPT).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self._script: ScriptRunner = client.register_script(GCRA_SCRIPT)
        self._prefix = f"{prefix}rl:"

    async def check(self, bucket_id: str, plan: Plan, cost: int = 1) -> Decision:
        """Admit or refuse one request of ``cost`` for ``bucket_id``: one round trip."""
        if cost < 1 or cost > plan.burst:
            raise ValueError(f"cost must be between 1 and the burst ({plan.burst})")
        reply = await self._script(
            keys=[self._prefix + bucket_id], args=[plan.interval_us, plan.window_us, cost]
        )
        allowed, remaining, retry_after, reset = (int(value) for value in reply)
        return Decision(bool(allowed), plan.burst, remaining, retry_after, reset)

    async def restore(self, client: Any, state: dict[str, float]) -> None:
        """Load a :meth:`GcraLimiter.snapshot` (bucket id -> TAT in epoch seconds), so moving a
        project onto Redis refills nothing. Keys whose TAT has passed are skipped."""
        for bucket_id, seconds in state.items():
            tat_us = round(seconds * 1_000_000)
            await client.eval(
                "local t = redis.call('TIME') "
                "local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) "
                "local ahead = tonumber(ARGV[1]) - now "
                "if ahead > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', "
                "math.ceil(ahead / 1000) + 1) end return 1",
                keys=[self._prefix + bucket_id],
                args=[str(tat_us)],
            )
