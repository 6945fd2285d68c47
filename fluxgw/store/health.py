"""Is the shared store reachable? A small state machine with an injected clock (pure).

The gateway asks :meth:`StoreHealth.should_try` before each store call. While the store is up
the answer is always yes. After a failure the store is *down*: requests are answered by the
fallback (docs/redis.md) without waiting on a dead connection, and one call every
``probe_interval`` seconds is let through as a probe; the first probe that succeeds ends the
outage. With the default 0.5 s, limits are exact again within 2 s of Redis coming back.

The transitions return whether they start or end an outage, so the caller logs one line per
outage (not one per request) and counts outages in its metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs


@attrs.define
class StoreHealth:
    clock: Callable[[], float]
    probe_interval: float = 0.5
    down_since: float | None = None
    last_error: str = ""
    outages: int = 0  # outages begun since start (metrics: a counter)
    failures: int = 0  # failed store calls since start
    _next_probe: float = 0.0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def should_try(self) -> bool:
        """True when the next call should go to the store (always while it is up)."""
        if self.down_since is None:
            return True
        now = self.clock()
        if now >= self._next_probe:
            self._next_probe = now + self.probe_interval
            return True
        return False

    def failed(self, error: str) -> bool:
        """Record a failed call; True when this failure starts an outage."""
        self.failures += 1
        self.last_error = error
        now = self.clock()
        self._next_probe = now + self.probe_interval
        if self.down_since is not None:
            return False
        self.down_since = now
        self.outages += 1
        return True

    def succeeded(self) -> bool:
        """Record a successful call; True when it ends an outage."""
        if self.down_since is None:
            return False
        self.down_since = None
        return True

    def as_json(self) -> dict[str, object]:
        """The store's part of ``/_flux/health``."""
        if self.down_since is None:
            return {"status": "ok", "outages": self.outages}
        return {
            "status": "unavailable",
            "down_since": self.down_since,
            "error": self.last_error,
            "outages": self.outages,
        }
