"""Prometheus text exposition of the gateway's metrics."""

from __future__ import annotations

import re

from fluxgw.metrics import DURATION_BUCKETS, Metrics, escape_label_value

# One sample line of the text format 0.0.4: name, optional {labels}, value.
SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9.eE+-]+|Inf|NaN))"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """The exposition's TYPE per family and its samples; fails on any malformed line."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples = []
    seen_help: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            seen_help.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in {"counter", "gauge", "histogram"} and name in seen_help
            types[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"malformed line: {line!r}"
            labels = {k: v for k, v in LABEL.findall(match["labels"] or "")}
            family = re.sub(r"_(bucket|sum|count)$", "", match["name"])
            assert match["name"] in types or family in types, f"sample before TYPE: {line!r}"
            samples.append((match["name"], labels, float(match["value"])))
    return types, samples


def render(metrics: Metrics, **kw) -> str:
    args = dict(workers={}, queue_depth=0, trace_backlog=0, trace_dropped=0)
    args.update(kw)
    return metrics.render(**args)


def test_empty_registry_is_valid():
    types, samples = parse(render(Metrics()))
    assert types["flux_requests_total"] == "counter"
    assert types["flux_request_duration_seconds"] == "histogram"
    assert types["flux_workers"] == "gauge"
    assert ("flux_rate_limited_total", {}, 0.0) in samples


def test_requests_counters_gauges_and_histogram():
    metrics = Metrics()
    for duration in (0.001, 0.004, 0.2, 0.3, 20.0):
        metrics.observe_request("orders", 200, duration)
    metrics.observe_request("orders", 502, 0.05)
    metrics.observe_request(None, 401, 0.0001)
    metrics.count_rate_limited()
    text = render(
        metrics,
        workers={"orders": {"busy": 2, "idle": 1}},
        queue_depth=7,
        trace_backlog=3,
        trace_dropped=1,
    )
    _, samples = parse(text)
    values = {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}
    assert values[("flux_requests_total", (("function", "orders"), ("status", "200")))] == 5
    assert values[("flux_requests_total", (("function", "orders"), ("status", "502")))] == 1
    assert values[("flux_requests_total", (("function", ""), ("status", "401")))] == 1
    assert values[("flux_rate_limited_total", ())] == 1
    assert values[("flux_workers", (("function", "orders"), ("state", "busy")))] == 2
    assert values[("flux_workers", (("function", "orders"), ("state", "idle")))] == 1
    assert values[("flux_queue_depth", ())] == 7
    assert values[("flux_trace_writer_backlog", ())] == 3
    assert values[("flux_traces_dropped_total", ())] == 1

    buckets = [
        (labels["le"], value)
        for name, labels, value in samples
        if name == "flux_request_duration_seconds_bucket" and labels["function"] == "orders"
    ]
    assert [le for le, _ in buckets] == [*(repr(b) for b in DURATION_BUCKETS), "+Inf"]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    by_le = dict(buckets)
    assert by_le["0.005"] == 2 and by_le["0.05"] == 3 and by_le["0.25"] == 4
    assert by_le["10.0"] == 5 and by_le["+Inf"] == 6
    assert values[("flux_request_duration_seconds_count", (("function", "orders"),))] == 6
    total = values[("flux_request_duration_seconds_sum", (("function", "orders"),))]
    assert abs(total - 20.555) < 1e-9


def test_bucket_bound_is_inclusive():
    metrics = Metrics()
    metrics.observe_request("f", 200, 0.005)
    _, samples = parse(render(metrics))
    first = next(s for s in samples if s[0].endswith("_bucket") and s[1]["le"] == "0.005")
    assert first[2] == 1


def test_label_values_are_escaped():
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    metrics = Metrics()
    metrics.observe_request('we"ird\\name\n', 200, 0.01)
    text = render(metrics, workers={'x"y': {"busy": 1}})
    _, samples = parse(text)
    assert any(labels.get("function") == 'we\\"ird\\\\name\\n' for _, labels, _ in samples)
    assert 'flux_workers{function="x\\"y",state="busy"} 1' in text


def test_observe_request_is_cheap():
    import time

    metrics = Metrics()
    started = time.perf_counter()
    for i in range(100_000):
        metrics.observe_request("orders", 200, (i % 100) / 1000)
    per_call = (time.perf_counter() - started) / 100_000
    assert per_call < 20e-6  # measured ~0.5 µs; generous for slow CI machines
