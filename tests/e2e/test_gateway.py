"""The real `flux serve` on loopback: every row of docs/reference.md#status-codes, limits, live
changes, stop."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from conftest import SERVER_LOOPS, bearer, flux, key_for, serve, write_function

HELLO = """
def handler(request, ctx):
    print("hello from the function")
    return {"path": request["path"], "query": request["query"], "body": request["body"],
            "auth": request["headers"].get("authorization"),
            "rid": ctx.request_id, "rid_header": request["headers"].get("x-request-id"),
            "traceparent": request["headers"].get("traceparent"),
            "cookie": request["headers"].get("cookie")}
"""
SLOW = """
import time
def handler(request, ctx):
    time.sleep(float(request["query"].get("s", "0.5")))
    return {"version": 1}
"""
CRASH = "import os\ndef handler(request, ctx):\n    os._exit(3)\n"
HANG = "import time\ndef handler(request, ctx):\n    time.sleep(60)\n"
GARBAGE = """
import os
def handler(request, ctx):
    return object()
"""


@pytest.fixture
def deployed(project: Path) -> Path:
    write_function(project, "hello", HELLO, route="/hello", method="POST")
    write_function(project, "slow", SLOW, route="/slow", method="GET")
    write_function(project, "crash", CRASH, route="/crash")
    write_function(project, "hang", HANG, route="/hang", timeout=1)
    write_function(project, "garbage", GARBAGE, route="/garbage")
    flux(project, "deploy")
    return project


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(response.headers["x-request-id"]) >= 16
    if code:
        assert body["error"] == code
    assert body["message"]
    return body


@SERVER_LOOPS
def test_every_status_of_the_contract(deployed: Path, loop: str) -> None:
    key = key_for(deployed)
    scoped = key_for(deployed, "scoped", "--function", "slow")
    with serve(deployed, loop=loop) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        ok = client.post(
            "/hello?x=1", headers={**bearer(key), "x-request-id": "client-chosen"}, json={"a": 1}
        )
        assert ok.status_code == 200
        data = ok.json()
        assert data["path"] == "/hello" and data["query"] == {"x": "1"}
        assert data["body"] == {"a": 1}
        assert data["auth"] is None  # the caller's key never reaches the function
        rid = ok.headers["x-request-id"]
        assert rid != "client-chosen" and data["rid"] == rid and data["rid_header"] == rid
        assert data["traceparent"].startswith("00-")
        assert ok.headers["ratelimit-policy"] and ok.headers["ratelimit"]

        for headers, code in [
            ({}, "missing_key"),
            ({"authorization": f"Basic {key}"}, "not_bearer"),
            ({"authorization": "Bearer flx_live_short"}, "malformed_key"),
            (
                {"authorization": f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}"},
                "malformed_key",
            ),
        ]:
            refused = client.post("/hello", headers=headers)
            assert_error(refused, 401, code)
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "ratelimit" not in refused.headers  # a 401 counts against no one

        assert_error(client.post("/hello", headers=bearer(scoped)), 403, "key_not_for_function")
        assert_error(client.get("/nope", headers=bearer(key)), 404, "not_found")
        assert_error(client.get("/hello", headers=bearer(key)), 404, "not_found")
        big = client.post("/hello", headers=bearer(key), content=b"x" * (6 * 1024 * 1024 + 1))
        assert_error(big, 413, "payload_too_large")
        assert_error(client.post("/crash", headers=bearer(key)), 502)
        assert_error(client.post("/garbage", headers=bearer(key)), 502)
        started = time.monotonic()
        assert_error(client.post("/hang", headers=bearer(key)), 504, "function_timeout")
        assert time.monotonic() - started < 5
        # after a crash and a timeout, the next requests get healthy workers
        assert client.post("/hello", headers=bearer(key), json={}).status_code == 200


def test_another_projects_key_is_403(deployed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "functions").mkdir(parents=True)
    foreign = key_for(other)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url) as client:
        assert_error(client.post("/hello", headers=bearer(foreign)), 403, "wrong_project")


@SERVER_LOOPS
def test_burst_then_refill(deployed: Path, loop: str) -> None:
    key, other = key_for(deployed), key_for(deployed, "other")
    with serve(deployed, loop=loop) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        started = time.monotonic()
        statuses = [client.get("/slow?s=0", headers=bearer(key)).status_code for _ in range(125)]
        elapsed = time.monotonic() - started
        assert statuses[:120] == [200] * 120, statuses
        # then refused, but for the one-per-second refill while the 125 calls ran (a loaded
        # machine can take more than a second for them)
        assert statuses[120:].count(200) <= int(elapsed), (statuses[120:], elapsed)
        assert 429 in statuses[120:]
        refused = client.get("/slow?s=0", headers=bearer(key))
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        assert client.get("/slow?s=0", headers=bearer(other)).status_code == 200
        time.sleep(float(refused.headers["retry-after"]) + 0.05)
        assert client.get("/slow?s=0", headers=bearer(key)).status_code == 200
        assert client.get("/slow?s=0", headers=bearer(key)).status_code == 429


@SERVER_LOOPS
async def test_limit_is_exact_under_concurrency(deployed: Path, loop: str) -> None:
    key = key_for(deployed)
    with serve(deployed, loop=loop) as gw:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits) as client:
            statuses: list[int] = []

            async def one() -> None:
                # 401-free path that does not reach a function: a 404 still counts
                r = await client.get("/no-such-route", headers=bearer(key))
                statuses.append(r.status_code)

            started = time.monotonic()
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tasks:
                    for _ in range(1000):
                        tasks.start_soon(one)
            elapsed = time.monotonic() - started
    admitted = statuses.count(404)
    assert statuses.count(429) + admitted == 1000
    assert 120 <= admitted <= 120 + int(elapsed) + 1  # burst plus refill, never more


def test_limits_survive_a_restart(deployed: Path) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        started = time.monotonic()
        drained = 0  # 120, plus what refilled while draining
        while client.get("/nope", headers=bearer(key)).status_code == 404:
            drained += 1
            assert drained <= 120 + time.monotonic() - started + 1
        assert drained >= 120
        drained_at = time.monotonic()
        assert gw.stop() == 0
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        admitted = 0
        while client.get("/nope", headers=bearer(key)).status_code == 404 and admitted < 130:
            admitted += 1
        # a restart refills nothing: only the one-per-second refill since the drain
        assert admitted <= time.monotonic() - drained_at + 1


@pytest.mark.timing
def test_revocation_applies_within_one_second(deployed: Path) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        assert client.get("/slow?s=0", headers=bearer(key)).status_code == 200
        flux(deployed, "api-keys", "revoke", "k")
        revoked_at = time.monotonic()
        while client.get("/slow?s=0", headers=bearer(key)).status_code != 401:
            assert time.monotonic() - revoked_at < 1.0
            time.sleep(0.02)
        assert_error(client.get("/slow?s=0", headers=bearer(key)), 401, "revoked_key")


@pytest.mark.timing
def test_project_update_applies_within_one_second(deployed: Path) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        first = client.get("/slow?s=0", headers=bearer(key))
        assert '"free"' in first.headers["ratelimit-policy"]
        flux(deployed, "project", "update", "--plan", "pro")
        changed_at = time.monotonic()
        while (
            '"pro"' not in client.get("/slow?s=0", headers=bearer(key)).headers["ratelimit-policy"]
        ):
            assert time.monotonic() - changed_at < 1.0
            time.sleep(0.02)


@pytest.mark.timing
async def test_deploy_is_picked_up_within_one_second_with_requests_in_flight(
    deployed: Path,
) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            in_flight: list[httpx.Response] = []

            async def slow_call() -> None:
                in_flight.append(await client.get("/slow?s=1.5", headers=bearer(key)))

            async with anyio.create_task_group() as tasks:
                for _ in range(3):
                    tasks.start_soon(slow_call)
                await anyio.sleep(0.3)
                slow = deployed / "functions" / "slow" / "main.py"
                slow.write_text(SLOW.replace('{"version": 1}', '{"version": 2}'))
                await anyio.to_thread.run_sync(lambda: flux(deployed, "deploy"))
                deployed_at = time.monotonic()
                first_new: list[float] = []  # when the first answer of version 2 arrived

                async def probe() -> None:
                    r = await client.get("/slow?s=0", headers=bearer(key))
                    if r.json() == {"version": 2} and not first_new:
                        first_new.append(time.monotonic())

                # A probe sent in the 0.2 s before the gateway sees the deploy is served by
                # the old generation and queues behind the slow calls: the next probes go
                # out meanwhile instead of waiting for it (it is cancelled at the end).
                async with anyio.create_task_group() as probes:
                    while not first_new:
                        assert time.monotonic() - deployed_at < 1.0
                        probes.start_soon(probe)
                        await anyio.sleep(0.02)
                    probes.cancel_scope.cancel()
                assert first_new[0] - deployed_at < 1.0
            assert [r.status_code for r in in_flight] == [200, 200, 200]
            assert all(r.json() == {"version": 1} for r in in_flight)


@SERVER_LOOPS
def test_sigterm_finishes_in_flight_work_and_leaves_no_process(deployed: Path, loop: str) -> None:
    import threading

    key = key_for(deployed)
    with serve(deployed, loop=loop) as gw:
        server = psutil.Process(gw.process.pid)
        with httpx.Client(base_url=gw.url, timeout=30) as client:
            assert client.get("/slow?s=0", headers=bearer(key)).status_code == 200
            result: list[httpx.Response] = []
            worker = threading.Thread(
                target=lambda: result.append(client.get("/slow?s=1", headers=bearer(key)))
            )
            worker.start()
            time.sleep(0.3)
            descendants = server.children(recursive=True)
            assert descendants, "expected warm worker processes"
            assert gw.stop(signal.SIGTERM) == 0
            worker.join(10)
        assert result and result[0].status_code == 200  # finished, not cut off
        _, alive = psutil.wait_procs(descendants, timeout=5)
        assert not alive, f"left behind: {alive}"


def test_unknown_json_body_and_text_bodies(deployed: Path) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        text = client.post(
            "/hello", headers={**bearer(key), "content-type": "text/plain"}, content=b"plain words"
        )
        assert text.json()["body"] == "plain words"
        bad_json = client.post(
            "/hello",
            headers={**bearer(key), "content-type": "application/json"},
            content=b"{not json",
        )
        # the gateway does not judge bodies: the function gets the text (and raw_body)
        assert bad_json.status_code == 200
        assert bad_json.json()["body"] == "{not json"
        cookies = client.post(
            "/hello",
            headers=[("authorization", f"Bearer {key}"), ("cookie", "a=1"), ("cookie", "b=2")],
        )
        assert cookies.json()["cookie"] == "a=1; b=2"


def test_a_second_gateway_on_the_same_project_is_refused(deployed: Path) -> None:
    with serve(deployed) as gw:
        second = flux(deployed, "serve", "--port", "0", check=False, timeout=30)
        assert second.returncode == 1
        assert f"pid {gw.process.pid}" in second.stderr
        assert "already serving" in second.stderr
        assert second.stderr.count("\n") == 1
    with serve(deployed):  # the lock went with the first gateway
        pass


@pytest.mark.timing
@SERVER_LOOPS
def test_a_stalled_body_gets_408_within_the_function_timeout(project: Path, loop: str) -> None:
    import socket
    import urllib.parse

    write_function(project, "quick", HELLO, route="/quick", timeout=1)
    flux(project, "deploy")
    key = key_for(project)
    with serve(project, loop=loop) as gw:
        url = urllib.parse.urlsplit(gw.url)
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(
                b"POST /quick HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                + f"Authorization: Bearer {key}\r\n\r\n".encode()
                + b"only part"
            )
            started = time.monotonic()
            chunks = []
            while chunk := sock.recv(65536):  # until the gateway closes the connection
                chunks.append(chunk)
            answer = b"".join(chunks).decode()
            assert time.monotonic() - started < 3
        assert answer.startswith("HTTP/1.1 408")
        assert '"error":"request_timeout"' in answer
        assert "x-request-id" in answer.lower()


def test_a_corrupt_state_file_keeps_the_last_good_state_live(deployed: Path) -> None:
    key = key_for(deployed)
    keys_file = deployed / ".flux" / "keys.json"
    good = keys_file.read_text()
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        assert client.get("/slow?s=0", headers=bearer(key)).status_code == 200
        keys_file.write_text("{broken")  # a hand edit gone wrong
        time.sleep(0.6)  # past the 200 ms reload tick
        assert client.get("/slow?s=0", headers=bearer(key)).status_code == 200
        assert any("keys.json" in line and "corrupt" in line for line in gw.output)
        keys_file.write_text(good)
        second = key_for(deployed, "second")
        deadline = time.monotonic() + 1.0
        while client.get("/slow?s=0", headers=bearer(second)).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_chunked_and_empty_bodies_reach_the_function(deployed: Path) -> None:
    key = key_for(deployed)
    with serve(deployed) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        headers = {**bearer(key), "content-type": "text/plain"}
        chunked = client.post("/hello", headers=headers, content=iter([b"ab", b"cd"]))
        assert chunked.json()["body"] == "abcd"
        empty = client.post("/hello", headers=bearer(key))
        assert empty.status_code == 200 and empty.json()["body"] is None
