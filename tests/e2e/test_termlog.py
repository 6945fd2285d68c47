"""The terminal shows what happens: `flux dev`'s request log, `flux serve --log-requests`,
`flux logs [--follow]`, and flux's one voice for its own lines (docs/logs.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FLUX, SERVER_LOOPS, flux, kill_group, serve, write_function

from fluxgw.runtime.discovery import find_runtime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PY = "def handler(request, ctx):\n    print('marker-python')\n    return {'ok': True}\n"
JS = """export default async function (req, ctx) {
  console.log("marker-{rt}");
  return { ok: 1 };
}
"""
FAILS = "def handler(request, ctx):\n    print('about to fail')\n    raise RuntimeError('boom')\n"
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  ([0-9a-f]{8})  ")


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


def rid(response: httpx.Response) -> str:
    return response.headers["x-request-id"][:8]


def request_lines(output: list[str]) -> list[str]:
    """The log part of a gateway's output: request lines and their indented output."""
    text = "".join(output).splitlines()
    return [line for line in text if LINE.match(line) or line.startswith("    ")]


def block_of(lines: list[str], short_id: str) -> list[str]:
    """A request's line and the indented lines under it."""
    start = next(i for i, line in enumerate(lines) if LINE.match(line) and short_id in line[:24])
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    return lines[start:end]


@pytest.fixture
def three_runtimes(project: Path) -> Path:
    write_function(project, "py", PY, route="/py", method="GET")
    for runtime in ("node", "deno"):
        if find_runtime(runtime) is None and not os.environ.get("CI"):
            pytest.skip(f"{runtime} not installed (scripts/setup installs it)")
        write_function(
            project,
            runtime,
            JS.replace("{rt}", runtime),
            runtime=runtime,
            route=f"/{runtime}",
            method="GET",
        )
    write_function(project, "fails", FAILS, route="/fails", method="GET")
    return project


def test_flux_dev_prints_each_request_with_its_output_under_it(three_runtimes: Path) -> None:
    key = flux(three_runtimes, "api-keys", "create", "--name", "laptop").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with (
        serve(three_runtimes, command="dev") as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        sent = [
            client.get("/py", headers=auth),
            client.get("/node", headers=auth),
            client.get("/deno", headers=auth),
            client.get("/fails", headers=auth),
            client.get("/missing", headers=auth),
        ]
        assert [r.status_code for r in sent] == [200, 200, 200, 502, 404]
        for _ in range(200):  # the free plan's burst is 120: drain it to get a 429
            answer = client.get("/missing", headers=auth)
            if answer.status_code == 429:
                break
        assert answer.status_code == 429
        sent.append(answer)
        ids = [rid(r) for r in sent]
        wait_until(lambda: ids[-1] in "".join(gw.output), 5, "the 429's line")
        lines = request_lines(gw.output)

        blocks = [block_of(lines, short) for short in ids]
        for block, runtime in zip(blocks[:3], ("python", "node", "deno"), strict=True):
            head, *under = block
            assert "  200  " in head and ("warm" in head or "cold" in head), head
            assert under == [f"    marker-{runtime}"], block
        failed = blocks[3]
        assert "502 function_error: function fails raised RuntimeError: boom" in failed[0]
        assert failed[1] == "    about to fail" and any("Traceback" in x for x in failed), failed
        assert "GET /missing  404 no route" in blocks[4][0] and len(blocks[4]) == 1
        assert re.search(r"GET /missing  429 rate limited: free plan, retry in \d+ s", blocks[5][0])
        # in the order they were answered
        starts = [lines.index(block[0]) for block in blocks]
        assert starts == sorted(starts)

    everything = "".join(gw.output)
    assert key not in everything
    assert "\x1b[" not in everything  # not a terminal: no colours
    assert "Running on" not in everything  # hypercorn's own line is not shown
    own = [line for line in everything.splitlines() if "serving" in line or "stopp" in line]
    assert own and all(line.startswith("flux: ") for line in own), own


def test_async_jobs_print_their_steps(project: Path) -> None:
    write_function(project, "later", PY, route="/later", method="POST", **{"async": True})
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    with serve(project, command="dev") as gw:
        answer = httpx.post(f"{gw.url}/later", headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 202
        short = rid(answer)
        done = f"{short}  job later  attempt 1/3 succeeded: 200"
        wait_until(lambda: done in "".join(gw.output), 15, "the job's success line")
        lines = request_lines(gw.output)
        mine = [line for line in lines if short in line[:24]]
        assert "POST /later  202 queued" in mine[0]
        assert "job later  attempt 1/3 started" in mine[1]
        assert done in mine[2]
        assert lines[lines.index(mine[2]) + 1] == "    marker-python"
    # the same steps from the trace store
    wait_until(lambda: "succeeded" in flux(project, "logs").stdout, 5, "the stored job steps")
    stored = [line for line in flux(project, "logs").stdout.splitlines() if short in line[:24]]
    assert "POST /later  202 queued" in stored[0]
    assert "job later  attempt 1/3 started" in stored[1]
    assert "job later  attempt 1/3 succeeded: 200" in stored[2]


@SERVER_LOOPS
def test_serve_logs_requests_only_when_asked(project: Path, loop: str) -> None:
    write_function(project, "py", PY, route="/py", method="GET")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with serve(project, loop=loop) as quiet:
        short = rid(httpx.get(f"{quiet.url}/py", headers=auth))
        wait_until(lambda: short in flux(project, "logs").stdout, 5, "the trace")
        assert request_lines(quiet.output) == []
    with serve(project, "--log-requests", loop=loop) as loud:
        short = rid(httpx.get(f"{loud.url}/py", headers=auth))
        wait_until(lambda: short in "".join(loud.output), 5, "the request line")
        assert block_of(request_lines(loud.output), short)[1:] == ["    marker-python"]


def test_serve_log_format_json_writes_only_json_on_stdout(project: Path) -> None:
    write_function(project, "py", PY, route="/py", method="GET")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    serving = ("--project", str(project), "serve", "--port", "0", "--log-format", "json")
    with running(*serving) as (out, errors):
        wait_until(lambda: "serving" in "".join(errors), 30, "the ready line on stderr")
        url = re.search(r"at (http://\S+)", "".join(errors)).group(1)
        answer = httpx.get(f"{url}/py", headers={"authorization": f"Bearer {key}"})
        httpx.get(f"{url}/py")
        wait_until(lambda: len(out) >= 2, 5, "two JSON lines")
    first, second = (json.loads(line) for line in out[:2])
    assert first["request_id"] == answer.headers["x-request-id"]
    assert (first["status"], first["function"], first["principal"]) == (200, "py", "k")
    assert [entry["text"] for entry in first["logs"]] == ["marker-python"]
    assert (second["status"], second["error"]) == (401, "missing_key")
    assert key not in "".join(out + errors)


@contextlib.contextmanager
def running(*argv: str) -> Iterator[tuple[list[str], list[str]]]:
    """A `flux` process (its own group) with its stdout and stderr lines collected as they
    come; killed on the way out."""
    process = subprocess.Popen(
        [FLUX, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out: list[str] = []
    errors: list[str] = []
    assert process.stdout is not None and process.stderr is not None
    threading.Thread(target=lambda: out.extend(process.stdout), daemon=True).start()
    threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True).start()
    try:
        yield out, errors
    finally:
        kill_group(process)
        process.wait()


def test_logs_follow_shows_a_new_request_within_a_second(project: Path) -> None:
    write_function(project, "py", PY, route="/py", method="GET")
    write_function(project, "other", PY.replace("python", "other"), route="/other")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        first = rid(client.get("/py", headers=auth))
        wait_until(lambda: first in flux(project, "logs").stdout, 5, "the first trace")
        following = ("--project", str(project), "logs", "--follow", "--function", "py", "-n", "1")
        with running(*following) as (lines, _):
            # the last matching request first: then the follower is known to be running
            wait_until(lambda: first in "".join(lines), 10, "the initial listing")
            other = rid(client.get("/other", headers=auth))
            new = client.get("/py", headers=auth)
            took = wait_until(lambda: "marker-python" in "".join(lines[2:]), 1.0, "the new one")
            print(f"flux logs --follow showed the request {took:.2f} s after its response")
            shown = "".join(lines).splitlines()
            assert shown[2].split("  ")[1] == rid(new) and "GET /py  200" in shown[2]
            assert shown[3] == "    marker-python"
            assert other not in "".join(lines)  # --function py only


def test_logs_filters_by_status_and_writes_json(project: Path) -> None:
    write_function(project, "py", PY, route="/py", method="GET")
    write_function(project, "fails", FAILS, route="/fails", method="GET")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        ok = [rid(client.get("/py", headers=auth)) for _ in range(2)]
        bad = rid(client.get("/fails", headers=auth))
        refused = rid(client.get("/py"))
        wait_until(lambda: refused in flux(project, "logs").stdout, 5, "all four traces")

    failures = flux(project, "logs", "--status", "5xx").stdout.splitlines()
    heads = [line for line in failures if LINE.match(line)]
    assert [line.split("  ")[1] for line in heads] == [bad]
    assert "    about to fail" in failures and any("Traceback" in line for line in failures)
    only_401 = flux(project, "logs", "--status", "401", "--since", "10m").stdout
    assert refused in only_401 and bad not in only_401 and ok[0] not in only_401

    as_json = [json.loads(line) for line in flux(project, "logs", "--json").stdout.splitlines()]
    assert [entry["request_id"][:8] for entry in as_json] == [*ok, bad, refused]
    assert as_json[0]["logs"][0]["text"] == "marker-python"
    assert as_json[2]["error"] == "function_error" and as_json[3]["principal"] is None
    assert key not in json.dumps(as_json)

    bad_filter = flux(project, "logs", "--status", "6xx", check=False)
    assert bad_filter.returncode == 2 and "5xx" in bad_filter.stderr
    assert bad_filter.stderr.count("\n") <= 3  # argparse usage + one error line, no traceback
