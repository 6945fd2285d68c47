"""Traces end to end (issue 5): the real `flux serve`, the real `flux trace`.

Every answer (200, 401, 429, 504) leaves a trace that `flux trace ID` shows within a second;
prefix lookup, `--last N`, `--json`, W3C trace context, and who may read /_flux/metrics.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from conftest import bearer, flux, key_for, serve, write_function

from fluxgw.state import StateDir
from fluxgw.tracestore import TraceStore
from fluxgw.tracing import TraceNotFound

pytestmark = pytest.mark.timeout(120)

HELLO = """
import time
def handler(request, ctx):
    print("first line from hello")
    time.sleep(0.01)
    print("second line from hello")
    return {"rid": ctx.request_id, "traceparent": request["headers"].get("traceparent"),
            "xrid": request["headers"].get("x-request-id")}
"""
HANG = "import time\ndef handler(request, ctx):\n    print('going to sleep')\n    time.sleep(60)\n"
VISIBLE_WITHIN_S = 1.0


@pytest.fixture
def deployed(project: Path) -> Path:
    write_function(project, "hello", HELLO, route="/hello", method="POST")
    write_function(project, "hang", HANG, route="/hang", timeout=1)
    flux(project, "deploy")
    return project


def wait_visible(project: Path, request_id: str) -> float:
    """Poll the trace store (as `flux trace` reads it) until the trace is there; seconds."""
    store = TraceStore(StateDir(project).traces_db)
    started = time.monotonic()
    while True:
        try:
            store.get(request_id)
            return time.monotonic() - started
        except TraceNotFound:
            pass
        if time.monotonic() - started > 5:
            raise AssertionError(f"trace {request_id} not visible after 5 s")
        time.sleep(0.01)


def trace_json(project: Path, request_id: str) -> dict:
    return json.loads(flux(project, "trace", request_id, "--json").stdout)


def spans_by_name(trace: dict) -> dict[str, dict]:
    return {span["name"]: span for span in trace["spans"]}


def test_a_200_has_gateway_runtime_function_spans_and_logs(deployed: Path) -> None:
    key = key_for(deployed, "ci-key")
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        response = client.post(
            "/hello", headers={**bearer(key), "origin": "https://a.example"}, json={}
        )
        assert response.status_code == 200, response.text
        rid = response.headers["x-request-id"]
        visible = wait_visible(deployed, rid)
        assert visible < VISIBLE_WITHIN_S, visible
        print(f"trace visible after {visible * 1000:.0f} ms")

        trace = trace_json(deployed, rid)
        assert trace["request_id"] == rid and trace["status"] == 200
        assert trace["method"] == "POST" and trace["path"] == "/hello"
        assert trace["function"] == "hello" and trace["key_name"] == "ci-key"
        assert [s["name"] for s in trace["spans"]] == ["gateway", "runtime", "function"]
        spans = spans_by_name(trace)
        gateway = spans["gateway"]["attributes"]
        assert gateway["auth"] == "ok" and gateway["key"] == "ci-key"
        assert gateway["ratelimit"]["allowed"] is True
        assert gateway["ratelimit"]["remaining"] == 119  # free plan burst 120, one used
        assert gateway["route"] == "POST /hello -> hello"
        assert "https://a.example" in gateway["cors"] and "allowed" in gateway["cors"]
        runtime = spans["runtime"]["attributes"]
        assert isinstance(runtime["worker_pid"], int) and runtime["worker_pid"] > 0
        assert runtime["start"] == "cold"
        function = spans["function"]
        assert function["attributes"]["status"] == 200
        assert 10 <= function["duration_ms"] < 5000
        # spans sit inside the request, in order
        assert spans["gateway"]["start"] <= spans["runtime"]["start"] <= function["start"]
        texts = [line["text"] for line in trace["logs"]]
        assert texts == ["first line from hello", "second line from hello"]
        first, second = trace["logs"]
        assert trace["started_at"] <= first["timestamp"] <= second["timestamp"]
        assert second["timestamp"] - first["timestamp"] >= 0.009
        assert second["timestamp"] <= trace["started_at"] + trace["duration_ms"] / 1000 + 0.01

        # a second call reuses the warm worker
        again = client.post("/hello", headers=bearer(key), json={})
        wait_visible(deployed, again.headers["x-request-id"])
        warm = spans_by_name(trace_json(deployed, again.headers["x-request-id"]))["runtime"]
        assert warm["attributes"]["start"] == "warm"
        assert warm["attributes"]["worker_pid"] == runtime["worker_pid"]

        # the waterfall: every span with offset and duration in ms, the log lines
        text = flux(deployed, "trace", rid).stdout
        for name in ("gateway", "runtime", "function"):
            assert re.search(rf"^{name}\s+\+\d+\.\d ms\s+\d+\.\d ms", text, re.M), text
        assert "first line from hello" in text and "second line from hello" in text
        assert "key=ci-key" in text and "start=cold" in text

    # the key itself is nowhere: not in `flux trace --json`, not in the database files
    dump = flux(deployed, "trace", "--last", "50", "--json").stdout
    assert key not in dump and key not in json.dumps(trace)
    flux_dir = StateDir(deployed).traces_db.parent
    for path in flux_dir.glob("traces.db*"):
        assert key.encode() not in path.read_bytes(), path


def test_refused_and_failed_requests_leave_traces(deployed: Path) -> None:
    key = key_for(deployed, "burst-key")
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        unauthorized = client.post("/hello", headers={"authorization": "Bearer nope"})
        assert unauthorized.status_code == 401
        timed_out = client.post("/hang", headers=bearer(key))
        assert timed_out.status_code == 504
        for _ in range(130):  # the rest of the burst (it refills 1/s), on a cheap 404 path
            if client.get("/nothing-here", headers=bearer(key)).status_code == 429:
                break
        limited = client.post("/hello", headers=bearer(key), json={})
        assert limited.status_code == 429

        cases = [
            (unauthorized, 401, "malformed_key"),
            (timed_out, 504, "function_timeout"),
            (limited, 429, "rate_limited"),
        ]
        for response, status, error in cases:
            rid = response.headers["x-request-id"]
            assert wait_visible(deployed, rid) < VISIBLE_WITHIN_S
            trace = trace_json(deployed, rid)
            assert trace["status"] == status
            assert response.json()["error"] == error
            gateway = spans_by_name(trace)["gateway"]["attributes"]
            assert gateway["error"] == error
            assert gateway["cors"]  # the CORS decision is recorded on errors too

        t401 = trace_json(deployed, unauthorized.headers["x-request-id"])
        assert t401["key_name"] is None
        assert [s["name"] for s in t401["spans"]] == ["gateway"]
        assert spans_by_name(t401)["gateway"]["attributes"]["auth"] == "malformed_key"

        t429 = trace_json(deployed, limited.headers["x-request-id"])
        g429 = spans_by_name(t429)["gateway"]["attributes"]
        assert t429["key_name"] == "burst-key"
        assert g429["ratelimit"] == {"allowed": False, "remaining": 0}
        assert "route" not in g429  # refused before routing

        t504 = trace_json(deployed, timed_out.headers["x-request-id"])
        assert t504["function"] == "hang"
        function = spans_by_name(t504)["function"]
        assert function["attributes"]["status"] == 504
        assert function["attributes"]["error"] == "function_timeout"
        assert 900 <= function["duration_ms"] < 5000
        assert [line["text"] for line in t504["logs"]] == ["going to sleep"]
        shown = flux(deployed, "trace", timed_out.headers["x-request-id"]).stdout
        assert "504" in shown and "function_timeout" in shown and "going to sleep" in shown


def test_prefix_lookup_last_and_json(deployed: Path) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        ids = []
        for _ in range(40):
            response = client.get("/missing", headers=bearer(key))
            assert response.status_code == 404
            ids.append(response.headers["x-request-id"])
        last = client.post("/hello", headers=bearer(key), json={})
        ids.append(last.headers["x-request-id"])
        for rid in ids:
            wait_visible(deployed, rid)

    rid = ids[-1]
    assert trace_json(deployed, rid)["request_id"] == rid  # full id
    by_prefix = flux(deployed, "trace", rid[:6], check=False)
    by_id = flux(deployed, "trace", rid)
    # 41 random ids: a 6-hex-char prefix collides with probability ~ 41/16**6
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert by_prefix.stdout == by_id.stdout
    assert trace_json(deployed, rid[:8].upper())["request_id"] == rid  # case-insensitive

    # an ambiguous prefix (random ids almost never share 6 characters: two rows are added)
    ambiguous = _ambiguous_prefix(deployed, ids)
    result = flux(deployed, "trace", ambiguous, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("flux: error:") and "Traceback" not in result.stderr
    assert result.stderr.count("flux: error:") == 1
    matching = [one for one in _all_ids(deployed) if one.startswith(ambiguous)]
    assert len(matching) >= 2
    for candidate in matching:
        assert candidate in result.stderr

    short = flux(deployed, "trace", rid[:5], check=False)
    assert short.returncode == 1 and "at least 6" in short.stderr
    assert short.stderr.count("\n") == 1 and "Traceback" not in short.stderr
    unknown = flux(deployed, "trace", "ffffffffffff", check=False)
    if not any(one.startswith("ffffffffffff") for one in ids):
        assert unknown.returncode == 1 and "no trace" in unknown.stderr

    listing = flux(deployed, "trace", "--last", "5").stdout.splitlines()
    assert listing[0].split() == ["ID", "TIME", "METHOD", "PATH", "STATUS", "DURATION"]
    rows = [row.split() for row in listing[1:] if row.strip()]
    assert len(rows) == 5
    assert rows[0][0] == rid and rows[0][2:5] == ["POST", "/hello", "200"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rows[0][1])
    assert rows[0][-1] == "ms" and float(rows[0][-2]) > 0
    assert [row[0] for row in rows[1:]] == list(reversed(ids[-5:-1]))
    assert all(row[2:5] == ["GET", "/missing", "404"] for row in rows[1:])

    listed = json.loads(flux(deployed, "trace", "--last", "3", "--json").stdout)
    assert [item["request_id"] for item in listed] == list(reversed(ids[-3:]))
    assert {"request_id", "started_at", "method", "path", "status", "duration_ms"} <= set(listed[0])


def _all_ids(project: Path) -> list[str]:
    return [t.request_id for t in TraceStore(StateDir(project).traces_db).last(1000)]


def _ambiguous_prefix(project: Path, ids: list[str]) -> str:
    """A 6-char prefix shared by two traces: record two more traces with chosen ids (the
    store's own writer path), as random ids almost never share 6 characters."""
    import sqlite3

    base = ids[0][:6]
    conn = sqlite3.connect(StateDir(project).traces_db)
    try:
        with conn:
            for suffix in ("0" * 26, "f" * 26):
                conn.execute(
                    "INSERT INTO traces (request_id, started_at, method, path, status, "
                    "duration_ms, trace_id, spans, logs) VALUES (?, ?, 'GET', '/x', 200, 1.0, "
                    "?, '[]', '[]')",
                    (base + suffix, time.time() - 3600, "1" * 32),
                )
    finally:
        conn.close()
    return base


def test_w3c_traceparent_and_client_request_id(deployed: Path) -> None:
    key = key_for(deployed)
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        response = client.post(
            "/hello",
            headers={**bearer(key), "traceparent": incoming, "x-request-id": "client-id-42"},
            json={},
        )
        assert response.status_code == 200
        rid = response.headers["x-request-id"]
        assert rid != "client-id-42"
        seen = response.json()
        assert seen["rid"] == rid and seen["xrid"] == rid
        version, trace_id, parent, flags = seen["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
        assert parent != "00f067aa0ba902b7" and re.fullmatch(r"[0-9a-f]{16}", parent)

        fresh = client.post("/hello", headers=bearer(key), json={})
        fresh_tp = fresh.json()["traceparent"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", fresh_tp)
        assert fresh_tp.split("-")[1] != "4bf92f3577b34da6a3ce929d0e0e4736"

        invalid = client.post("/hello", headers={**bearer(key), "traceparent": "garbage"}, json={})
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", invalid.json()["traceparent"])
        refused = client.post("/hello", headers={"traceparent": incoming}, json={})
        assert refused.status_code == 401
        for one in (response, fresh, invalid, refused):
            wait_visible(deployed, one.headers["x-request-id"])

    trace = trace_json(deployed, rid)
    assert trace["traceparent_in"] == incoming
    assert trace["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace["client_request_id"] == "client-id-42"
    assert flux(deployed, "trace", "client-id-42", check=False).returncode == 1  # not an id
    text = flux(deployed, "trace", rid).stdout
    assert incoming in text and "client-id-42" in text
    # a request refused before dispatch still carries the caller's trace id
    t401 = trace_json(deployed, refused.headers["x-request-id"])
    assert t401["status"] == 401 and t401["traceparent_in"] == incoming
    assert t401["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    plain = trace_json(deployed, fresh.headers["x-request-id"])
    assert plain["traceparent_in"] is None and plain["client_request_id"] is None
    assert plain["trace_id"] == fresh_tp.split("-")[1]


def test_metrics_and_health_access(deployed: Path) -> None:
    key = key_for(deployed)
    scoped = key_for(deployed, "scoped", "--function", "hello")
    other_scope = key_for(deployed, "s2", "--function", "hang")
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        health = client.get("/_flux/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.headers["x-request-id"]

        assert client.post("/hello", headers=bearer(key), json={}).status_code == 200
        assert client.post("/hello", headers=bearer(scoped), json={}).status_code == 200
        assert client.get("/nothing", headers=bearer(key)).status_code == 404
        refused = 0
        for _ in range(130):  # through the scoped key's burst of 120
            if client.get("/nothing", headers=bearer(scoped)).status_code == 429:
                refused += 1
                break
        assert refused == 1

        none = client.get("/_flux/metrics")
        assert none.status_code == 401 and none.json()["error"] == "missing_key"
        forbidden = client.get("/_flux/metrics", headers=bearer(other_scope))
        assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
        metrics = client.get("/_flux/metrics", headers=bearer(key))
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.text
    samples = _samples(text)
    assert samples['flux_requests_total{function="hello",status="200"}'] == 2
    assert samples['flux_requests_total{function="",status="404"}'] >= 120
    assert samples['flux_requests_total{function="",status="401"}'] == 1
    assert samples['flux_requests_total{function="",status="403"}'] == 1
    assert samples['flux_requests_total{function="",status="429"}'] == 1
    assert samples["flux_rate_limited_total"] == 1
    assert samples['flux_request_duration_seconds_count{function="hello"}'] == 2
    assert samples['flux_request_duration_seconds_bucket{function="hello",le="+Inf"}'] == 2
    assert samples["flux_queue_depth"] == 0
    assert "flux_trace_writer_backlog" in samples
    assert samples['flux_workers{function="hello",state="idle"}'] >= 1
    assert 'flux_workers{function="hello",state="busy"}' in samples
    for family, kind in [
        ("flux_requests_total", "counter"),
        ("flux_request_duration_seconds", "histogram"),
        ("flux_rate_limited_total", "counter"),
        ("flux_workers", "gauge"),
        ("flux_queue_depth", "gauge"),
        ("flux_trace_writer_backlog", "gauge"),
    ]:
        assert f"# TYPE {family} {kind}" in text


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
