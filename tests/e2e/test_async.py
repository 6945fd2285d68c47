"""Async functions end to end (docs/reference.md#async-functions): 202 at once, the lifecycle at
/_flux/invocations/ID, retries then failed, the trace, and kill -9 durability."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import SERVER_LOOPS, bearer, flux, key_for, serve, write_function

JOB = """
import json, time
def handler(request, ctx):
    body = request["body"] or {}
    print("job starting", ctx.request_id)
    time.sleep(float(body.get("sleep", 0)))
    if body.get("dir"):
        with open(body["dir"] + "/" + ctx.request_id, "a") as marker:
            marker.write("ran\\n")
    return {"done": ctx.request_id, "n": body.get("n")}
"""
CRASH = "import os\ndef handler(request, ctx):\n    print('about to crash')\n    os._exit(3)\n"


@pytest.fixture
def deployed(project: Path) -> Path:
    write_function(project, "job", JOB, route="/job", **{"async": True})
    write_function(project, "crash", CRASH, route="/crash", **{"async": True})
    flux(project, "deploy")
    # these tests poll /_flux/invocations every 20 ms: on the free plan a slow machine would
    # spend the key's burst on polling and read 429s (limits have tests of their own)
    flux(project, "project", "update", "--plan", "team")
    return project


def invocation(client: httpx.Client, key: str, request_id: str) -> dict:
    response = client.get(f"/_flux/invocations/{request_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(
    client: httpx.Client, key: str, request_id: str, states: set[str], timeout: float
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = invocation(client, key, request_id)
        if job["status"] in states:
            return job
        assert time.monotonic() < deadline, f"still {job['status']} after {timeout} s: {job}"
        time.sleep(0.02)


def trace_json(project: Path, request_id: str) -> dict:
    return json.loads(flux(project, "trace", request_id, "--json").stdout)


@pytest.mark.timing
@pytest.mark.timeout(60)
@SERVER_LOOPS
def test_queued_running_succeeded(deployed: Path, loop: str) -> None:
    key = key_for(deployed)
    with serve(deployed, loop=loop) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        # four slow jobs take every dispatcher slot, so the fifth is seen waiting
        blockers = [client.post("/job", headers=bearer(key), json={"sleep": 1.0}) for _ in range(4)]
        started = time.monotonic()
        accepted = client.post("/job", headers=bearer(key), json={"sleep": 0.8, "n": 7})
        latency = time.monotonic() - started
        print(f"enqueue-to-202: {latency * 1000:.1f} ms")
        assert accepted.status_code == 202, accepted.text
        rid = accepted.headers["x-request-id"]
        assert accepted.json() == {"request_id": rid, "status": "queued"}
        assert latency < 0.5
        assert all(b.status_code == 202 for b in blockers)

        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = invocation(client, key, rid)
            if not seen or seen[-1] != job["status"]:
                seen.append(job["status"])
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.02)
        assert seen == ["queued", "running", "succeeded"], seen
        assert job["request_id"] == rid and job["function"] == "job"
        assert job["attempts"] == 1 and job["error"] is None
        assert job["result"]["status"] == 200
        assert job["result"]["body"] == {"done": rid, "n": 7}
        for blocker in blockers:
            wait_state(client, key, blocker.headers["x-request-id"], {"succeeded"}, 20)

        # another project's key, or a key scoped to another function, cannot read it
        scoped = key_for(deployed, "only-crash", "--function", "crash")
        time.sleep(1.2)  # a running gateway picks new keys up within 1 s
        hidden = client.get(f"/_flux/invocations/{rid}", headers=bearer(scoped))
        assert hidden.status_code == 404
        assert client.get(f"/_flux/invocations/{rid}").status_code == 401
        unknown = client.get("/_flux/invocations/" + "0" * 32, headers=bearer(key))
        assert unknown.status_code == 404

        # an unknown route is still 404, not queued
        missing = client.post("/job/", headers=bearer(key), json={})
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        wrong_method = client.get("/job", headers=bearer(key))
        assert wrong_method.status_code == 404

        # the trace: the gateway's 202, then queue, runtime and function, and the final state
        deadline = time.monotonic() + 5
        while True:
            trace = trace_json(deployed, rid)
            if trace["async_state"] == "succeeded" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert trace["status"] == 202 and trace["async_state"] == "succeeded"
    names = [span["name"] for span in trace["spans"]]
    assert names == ["gateway", "queue", "runtime", "function"], names
    spans = {span["name"]: span for span in trace["spans"]}
    assert spans["gateway"]["attributes"]["queued"] is True
    assert spans["queue"]["attributes"]["attempt"] == 1
    assert spans["queue"]["duration_ms"] > 100  # it waited for a free slot
    assert spans["runtime"]["attributes"]["worker_pid"] > 0
    assert spans["runtime"]["attributes"]["start"] in ("cold", "warm")
    assert spans["function"]["attributes"]["status"] == 200
    assert spans["function"]["duration_ms"] >= 790
    assert [line["text"] for line in trace["logs"]] == [f"job starting {rid}"]
    for path in (deployed / ".flux").glob("*.db*"):  # queue and traces: never the key
        assert key.encode() not in path.read_bytes(), path
    text = flux(deployed, "trace", rid).stdout
    assert "async        succeeded" in text and "queue" in text
    listing = flux(deployed, "trace", "--last", "1000").stdout.splitlines()
    row = next(line for line in listing if line.startswith(rid))
    assert "POST" in row and "/job" in row and "202 (succeeded)" in row


@pytest.mark.timeout(60)
@SERVER_LOOPS
def test_a_crashing_function_fails_after_three_attempts(deployed: Path, loop: str) -> None:
    key = key_for(deployed)
    with serve(deployed, loop=loop) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        started = time.monotonic()
        accepted = client.post("/crash", headers=bearer(key), json={})
        assert accepted.status_code == 202
        rid = accepted.headers["x-request-id"]
        attempts_seen = set()
        deadline = time.monotonic() + 30
        while True:
            job = invocation(client, key, rid)
            attempts_seen.add((job["status"], job["attempts"]))
            if job["status"] == "failed":
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        took = time.monotonic() - started
        print(f"failed after {took:.1f} s")
        assert job["attempts"] == 3 and job["max_attempts"] == 3
        assert job["result"] is None
        assert "502" in job["error"] or "crash" in job["error"], job["error"]
        assert "gave up after 3 attempts" in job["error"]
        # between attempts it was back in the queue with the error kept
        assert ("queued", 1) in attempts_seen or ("queued", 2) in attempts_seen, attempts_seen
        # a retry waits (exponential backoff, base 1 s with jitter in [0.5, 1]): >= 1.5 s
        assert took >= 1.4

        deadline = time.monotonic() + 5
        while True:
            trace = trace_json(deployed, rid)
            if trace["async_state"] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert trace["async_state"] == "failed"
    queue_spans = [s for s in trace["spans"] if s["name"] == "queue"]
    outcomes = [s["attributes"].get("outcome") for s in queue_spans]
    assert outcomes.count("retry") == 2 and outcomes.count("failed") == 1, outcomes
    functions = [s for s in trace["spans"] if s["name"] == "function"]
    assert len(functions) == 3
    assert all(s["attributes"]["status"] == 502 for s in functions)
    assert [line["text"] for line in trace["logs"]].count("about to crash") >= 1


def _workers_of(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return process.children(recursive=True)
    return []


@pytest.mark.timeout(120)
def test_queued_jobs_survive_kill_9(deployed: Path, tmp_path: Path) -> None:
    """At least once: every accepted job runs after a SIGKILL and a restart (an attempt cut
    short by the kill may run twice, so duplicates are allowed)."""
    key = key_for(deployed)
    markers = tmp_path / "markers"
    markers.mkdir()
    accepted: list[str] = []
    latencies: list[float] = []
    # --no-sandbox: the jobs report that they ran by writing into ``markers`` on the host,
    # which a sandboxed worker cannot (docs/sandbox.md); the queue is what is tested here.
    with serve(deployed, "--no-sandbox") as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        for n in range(20):
            started = time.monotonic()
            response = client.post(
                "/job", headers=bearer(key), json={"sleep": 0.3, "dir": str(markers), "n": n}
            )
            latencies.append(time.monotonic() - started)
            assert response.status_code == 202, response.text
            accepted.append(response.json()["request_id"])
        # kill while some jobs are running (one has finished) and the rest are queued
        deadline = time.monotonic() + 15
        while not any(markers.iterdir()):
            assert time.monotonic() < deadline, "no job ran within 15 s"
            time.sleep(0.005)
        workers = _workers_of(psutil.Process(gw.process.pid))
        os.killpg(gw.process.pid, signal.SIGKILL)  # the gateway's process group
        for worker in workers:  # workers have their own groups: a whole-machine crash
            with contextlib.suppress(psutil.Error):
                worker.kill()
        gw.process.wait(timeout=10)
    ran_before = {p.name for p in markers.iterdir()}
    print(
        f"enqueue-to-202 median {sorted(latencies)[10] * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; {len(ran_before)} ran before the kill"
    )
    assert 1 <= len(ran_before) < 20, "every job ran before the kill: nothing was tested"

    with serve(deployed, "--no-sandbox") as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while {p.name for p in markers.iterdir()} != set(accepted):
            assert time.monotonic() < deadline, (
                f"{len(list(markers.iterdir()))} of 20 ran after restart"
            )
            time.sleep(0.1)
        for rid in accepted:
            job = wait_state(client, key, rid, {"succeeded", "failed"}, 10)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 1  # an attempt cut short by the kill is not counted
    assert {p.name for p in markers.iterdir()} == set(accepted)
    runs = sum(len(p.read_text().splitlines()) for p in markers.iterdir())
    print(f"{runs} runs for 20 jobs (duplicates are allowed: at least once)")
    assert runs >= 20
