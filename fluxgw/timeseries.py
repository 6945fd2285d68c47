"""The last 15 minutes of requests, one slot per second, in memory (the dashboard's charts).

:meth:`RequestSeries.observe` runs once per answered request (next to the Prometheus
counters), so it is an integer division, a list index and a few increments. Latency is kept
as a small log-scale histogram per second, so p50/p95 of any second (or of a whole window)
are read without storing every duration. Pure: time comes from an injected clock.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from typing import Any

WINDOW_S = 900  # 15 minutes

# Latency bucket upper bounds in seconds: 0.1 ms to ~60 s, each 25% above the last; a
# percentile read from them is within 25% of the true value.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.25**i for i in range(60))


class _Second:
    __slots__ = ("c2xx", "c3xx", "c4xx", "c5xx", "c429", "count", "latency", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.count = self.c2xx = self.c3xx = self.c4xx = self.c5xx = self.c429 = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)


def percentile(histogram: list[int], fraction: float) -> float | None:
    """The bucket bound (seconds) under which ``fraction`` of the observations fall."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = fraction * total
    running = 0
    for index, count in enumerate(histogram):
        running += count
        if running >= rank:
            return LATENCY_BOUNDS[min(index, len(LATENCY_BOUNDS) - 1)]
    return LATENCY_BOUNDS[-1]


class RequestSeries:
    """Per-second counts by status class and latency percentiles over a sliding window."""

    def __init__(self, window_s: int = WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._slots: list[_Second | None] = [None] * window_s

    def observe(self, status: int, duration_s: float) -> None:
        now = int(self._clock())
        index = now % self.window_s
        slot = self._slots[index]
        if slot is None or slot.second != now:
            slot = self._slots[index] = _Second(now)
        slot.count += 1
        if status == 429:
            slot.c429 += 1
        if status >= 500:
            slot.c5xx += 1
        elif status >= 400:
            slot.c4xx += 1
        elif status >= 300:
            slot.c3xx += 1
        else:
            slot.c2xx += 1
        slot.latency[bisect.bisect_left(LATENCY_BOUNDS, duration_s)] += 1

    def _slots_since(self, first: int, last: int) -> Iterable[tuple[int, _Second | None]]:
        for second in range(first, last + 1):
            slot = self._slots[second % self.window_s]
            yield second, (slot if slot is not None and slot.second == second else None)

    def points(self, seconds: int | None = None) -> list[dict[str, Any]]:
        """One point per second, oldest first, up to the last complete second.

        ``t`` is the epoch second; latencies are milliseconds (None when no request).
        """
        last = int(self._clock()) - 1  # the current second is still filling
        span = min(seconds or self.window_s, self.window_s - 1)
        return [_point(second, slot) for second, slot in self._slots_since(last - span + 1, last)]

    def totals(self, seconds: int | None = None) -> dict[str, Any]:
        """Counts and latency percentiles over the last ``seconds`` (default: the window)."""
        last = int(self._clock())
        span = min(seconds or self.window_s, self.window_s)
        slots = [slot for _, slot in self._slots_since(last - span + 1, last) if slot is not None]
        out = {
            "count": sum(slot.count for slot in slots),
            "c2xx": sum(slot.c2xx for slot in slots),
            "c3xx": sum(slot.c3xx for slot in slots),
            "c4xx": sum(slot.c4xx for slot in slots),
            "c5xx": sum(slot.c5xx for slot in slots),
            "c429": sum(slot.c429 for slot in slots),
        }
        # Summed column by column in C (zip/map): once a second over 900 slots, this is the
        # dashboard's largest fixed cost, and a Python double loop made it ~10x dearer.
        merged = list(map(sum, zip(*(slot.latency for slot in slots), strict=True)))
        merged = merged or [0] * (len(LATENCY_BOUNDS) + 1)
        p50, p95 = percentile(merged, 0.5), percentile(merged, 0.95)
        return {**out, "p50_ms": _ms(p50), "p95_ms": _ms(p95)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _point(second: int, slot: _Second | None) -> dict[str, Any]:
    if slot is None:
        return {"t": second, "count": 0, "c2xx": 0, "c3xx": 0, "c4xx": 0, "c5xx": 0, "c429": 0,
                "p50_ms": None, "p95_ms": None}  # fmt: skip
    return {
        "t": second,
        "count": slot.count,
        "c2xx": slot.c2xx,
        "c3xx": slot.c3xx,
        "c4xx": slot.c4xx,
        "c5xx": slot.c5xx,
        "c429": slot.c429,
        "p50_ms": _ms(percentile(slot.latency, 0.5)),
        "p95_ms": _ms(percentile(slot.latency, 0.95)),
    }
