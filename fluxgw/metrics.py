"""Request metrics in memory, exposed in the Prometheus text format (version 0.0.4).

A pure registry: the gateway calls :meth:`Metrics.observe_request` once per response (the hot
path, so it is a couple of dict lookups and an in-place increment) and :meth:`Metrics.render`
when ``/_flux/metrics`` is scraped. Gauges that live elsewhere (worker pools, the queue, the
trace writer) are passed to ``render`` as plain values rather than pulled from those objects,
so this module depends on nothing and is tested without a gateway.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .timeseries import RequestSeries

# Request latency buckets in seconds: 5 ms (a warm python worker) up to 10 s; the top bucket
# sits below the 30 s function timeout so slow-but-successful calls are still told apart
# from +Inf (timeouts and near-timeouts).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def escape_label_value(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # HELP text escapes backslash and newline only (quotes are literal there).
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class _Histogram:
    """One label set's histogram: per-bucket counts (not cumulative: one increment per
    observation), summed into cumulative counts only when rendered."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last slot is the +Inf overflow
        self.sum = 0.0


class Metrics:
    """Counters and histograms for the gateway's requests; not thread-safe (one trio loop)."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("histogram buckets must be strictly increasing")
        self._buckets = buckets
        self._requests: dict[tuple[str, int], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._rate_limited = 0
        self._store_unavailable = 0
        self.series = RequestSeries()  # the dashboard's last 15 minutes, per second

    def observe_request(self, function: str | None, status: int, duration_s: float) -> None:
        """Count one answered request and its duration; ``function`` is None when the request
        never reached one (401, 404, 429...)."""
        name = function or ""
        key = (name, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._durations.get(name)
        if histogram is None:
            histogram = self._durations[name] = _Histogram(len(self._buckets))
        # bisect_left: an observation equal to a bound belongs to that bucket (le = "<=").
        histogram.counts[bisect.bisect_left(self._buckets, duration_s)] += 1
        histogram.sum += duration_s
        self.series.observe(status, duration_s)

    def count_rate_limited(self) -> None:
        """Count one request refused with 429."""
        self._rate_limited += 1

    def count_store_unavailable(self) -> None:
        """Count one request refused with 503 because the shared store was unreachable."""
        self._store_unavailable += 1

    def function_summary(self) -> dict[str, dict[str, Any]]:
        """Per function since start: requests, errors (5xx) and p50 in ms, interpolated in
        its histogram bucket the way Prometheus' histogram_quantile does (the dashboard)."""
        out: dict[str, dict[str, Any]] = {}
        for (function, status), count in self._requests.items():
            if not function:
                continue
            entry = out.setdefault(function, {"requests": 0, "errors": 0, "p50_ms": None})
            entry["requests"] += count
            if status >= 500:
                entry["errors"] += count
        for function, entry in out.items():
            histogram = self._durations.get(function)
            if histogram is not None:
                entry["p50_ms"] = _quantile(self._buckets, histogram.counts, 0.5)
        return out

    def render(
        self,
        *,
        workers: Mapping[str, Mapping[str, int]],
        queue_depth: int,
        trace_backlog: int,
        trace_dropped: int,
        store: Mapping[str, int] | None = None,
    ) -> str:
        """The whole exposition: HELP/TYPE lines, then samples, one metric family at a time.

        ``workers`` maps a function name to its worker counts by state ("busy", "idle") and its
        invocation counts ("in_flight", "waiting").
        """
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {_escape_help(help_text)}")
            out.append(f"# TYPE {name} {kind}")

        family("flux_requests_total", "counter", "Requests answered, by function and status.")
        for (function, status), count in sorted(self._requests.items()):
            labels = _labels((("function", function), ("status", str(status))))
            out.append(f"flux_requests_total{labels} {count}")

        family(
            "flux_request_duration_seconds",
            "histogram",
            "Time from request received to response sent, by function.",
        )
        bounds = [*(_number(b) for b in self._buckets), "+Inf"]
        for function, histogram in sorted(self._durations.items()):
            running = 0
            for bound, count in zip(bounds, histogram.counts, strict=True):
                running += count
                labels = _labels((("function", function), ("le", bound)))
                out.append(f"flux_request_duration_seconds_bucket{labels} {running}")
            labels = _labels((("function", function),))
            out.append(f"flux_request_duration_seconds_sum{labels} {_number(histogram.sum)}")
            out.append(f"flux_request_duration_seconds_count{labels} {running}")

        family("flux_rate_limited_total", "counter", "Requests refused with 429.")
        out.append(f"flux_rate_limited_total {self._rate_limited}")

        family("flux_workers", "gauge", "Worker processes, by function and state.")
        for function, states in sorted(workers.items()):
            for state in ("busy", "idle"):
                labels = _labels((("function", function), ("state", state)))
                out.append(f"flux_workers{labels} {states.get(state, 0)}")
        for name, key, help_text in (
            ("flux_invocations_in_flight", "in_flight", "Invocations running, by function."),
            ("flux_invocations_waiting", "waiting", "Calls waiting for a worker, by function."),
        ):
            family(name, "gauge", help_text)
            for function, states in sorted(workers.items()):
                labels = _labels((("function", function),))
                out.append(f"{name}{labels} {states.get(key, 0)}")

        family("flux_queue_depth", "gauge", "Async invocations queued or running.")
        out.append(f"flux_queue_depth {queue_depth}")
        family("flux_trace_writer_backlog", "gauge", "Traces recorded but not yet written to disk.")
        out.append(f"flux_trace_writer_backlog {trace_backlog}")
        family(
            "flux_traces_dropped_total",
            "counter",
            "Traces dropped because the writer fell behind or failed.",
        )
        out.append(f"flux_traces_dropped_total {trace_dropped}")
        if store is not None:  # the Redis store (docs/redis.md)
            family("flux_store_up", "gauge", "1 while the shared store answers, else 0.")
            out.append(f"flux_store_up {store['up']}")
            family("flux_store_outages_total", "counter", "Shared-store outages since start.")
            out.append(f"flux_store_outages_total {store['outages']}")
            family("flux_store_failures_total", "counter", "Failed shared-store calls.")
            out.append(f"flux_store_failures_total {store['failures']}")
            family(
                "flux_store_unavailable_total",
                "counter",
                "Requests refused with 503 while the store was unreachable (fallback closed).",
            )
            out.append(f"flux_store_unavailable_total {self._store_unavailable}")
        return "\n".join(out) + "\n"


def _quantile(bounds: tuple[float, ...], counts: list[int], fraction: float) -> float | None:
    """Milliseconds under which ``fraction`` of the observations fall (linear within a bucket)."""
    total = sum(counts)
    if total == 0:
        return None
    rank, running, lower = fraction * total, 0, 0.0
    for index, count in enumerate(counts):
        upper = bounds[index] if index < len(bounds) else bounds[-1]
        if count and running + count >= rank:
            return round((lower + (upper - lower) * (rank - running) / count) * 1000, 3)
        running += count
        lower = upper
    return round(bounds[-1] * 1000, 3)
