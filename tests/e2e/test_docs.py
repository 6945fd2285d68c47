"""The docs cannot rot: every command and code block in README.md, docs/testing.md and
docs/tls.md runs here.

The README's `scripts/test` line is not run from inside the suite it starts (it would recurse):
it is what CI runs (.ci/run executes exactly it).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import flux, serve

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
VENV_BIN = str(Path(sys.executable).parent)


def blocks(path: Path, language: str, section: str | None = None) -> list[str]:
    text = path.read_text()
    if section is not None:
        start = text.index(f"## {section}")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else None]
    return [body for lang, body in BLOCK.findall(text) if lang == language]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shell(script: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def test_readme_tutorial_runs(tmp_path: Path) -> None:
    port = str(free_port())
    steps = [b.replace("4000", port) for b in blocks(ROOT / "README.md", "sh", "Tutorial")]
    assert len(steps) >= 6
    # If a step fails, the background server must not outlive the test.
    script = "trap 'kill %1 2>/dev/null || true' EXIT\n" + "\n".join(steps)
    result = shell(script, tmp_path)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "GET     /hello/python  hello_python  python" in output  # routing table
    assert "laptop" in output  # api-keys list
    assert '"message": "Hello, Ada!"' in output  # python
    assert '"message":"Hello, Bob!"' in output  # node
    assert "x-request-id:" in output.lower() and "Hello, Eve!" in output  # deno, with headers
    assert "runtime" in output and "function" in output and "greeting" in output  # waterfall
    assert '"error":"revoked_key"' in output.replace(" ", "")


def test_readme_run_example_command_serves_and_its_curl_lines_work(tmp_path: Path) -> None:
    (first,) = blocks(ROOT / "README.md", "sh", "Two commands")
    run_example = next(
        line.split("#")[0].strip()
        for line in first.splitlines()
        if line.startswith("scripts/run-example")
    )
    port = str(free_port())
    process = subprocess.Popen(
        [str(ROOT / run_example)],
        cwd=ROOT,
        env={**os.environ, "PORT": port},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving" in line:
                break
        assert any("serving" in line for line in lines), "".join(lines)
        curls = [line.strip() for line in lines if line.strip().startswith("curl ")]
        assert len(curls) == 3, "".join(lines)
        for curl in curls:
            answer = shell(curl + " -w '\\n%{http_code}'", tmp_path, timeout=60)
            assert answer.stdout.rstrip().endswith(("200", "201")), (curl, answer.stdout)
        health = httpx.get(f"http://127.0.0.1:{port}/_flux/health", timeout=10)
        assert health.json()["functions"] == 4
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_testing_page_examples_pass(tmp_path: Path) -> None:
    page = ROOT / "docs" / "testing.md"
    project = tmp_path / "shop"
    flux(None, "init", str(project))
    (project / "tests" / "test_orders.py").write_text("\n\n".join(blocks(page, "python")))
    (command,) = blocks(page, "sh")
    result = shell(command, project, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def normalise_terminal(text: str, project: str, port: str) -> list[str]:
    """A `flux dev` terminal with what changes from run to run made constant: times, request
    ids, durations, the project folder, the port, the deployment version, warm/cold."""
    text = text.replace(project, "/home/ada/shop").replace(f"127.0.0.1:{port}", "127.0.0.1:4000")
    text = re.sub(r"(?m)^\d\d:\d\d:\d\d\.\d{3}  [0-9a-f]{8}  ", "HH:MM:SS.mmm  ID  ", text)
    text = re.sub(r"\d+(\.\d+)? (ms|s)\b", "N ms", text)
    text = re.sub(r"version \d+", "version N", text)
    text = re.sub(r"Dashboard: http://127.0.0.1:\d+/login\?token=\S+", "Dashboard: URL", text)
    text = re.sub(r" (warm|cold)$", " warm", text, flags=re.M)
    text = re.sub(r"\(bubblewrap [^)]*\)", "(bubblewrap VERSION)", text)
    return text.splitlines()


def test_readme_shows_the_flux_dev_terminal_as_it_is(tmp_path: Path) -> None:
    (shown,) = blocks(ROOT / "README.md", "text", "Tutorial")
    project = tmp_path / "shop"
    flux(None, "init", str(project))
    key = flux(project, "api-keys", "create", "--name", "laptop").stdout.strip()
    with serve(project, command="dev") as gw:
        deadline = time.monotonic() + 30
        auth = {"authorization": f"Bearer {key}"}
        with httpx.Client(
            base_url=gw.url, headers=auth, timeout=30
        ) as client:  # as in the tutorial
            assert client.get("/hello/python", params={"name": "Ada"}).status_code == 200
            assert client.post("/hello/node", json={"name": "Bob"}).status_code == 200
            assert client.get("/hello/deno", params={"name": "Eve"}).status_code == 200
        while "greeting Eve" not in "".join(gw.output):
            assert time.monotonic() < deadline, "".join(gw.output)
            time.sleep(0.05)
    port = gw.url.rsplit(":", 1)[1]
    real = normalise_terminal("".join(gw.output), str(project), port)
    expected = normalise_terminal(shown, "/home/ada/shop", "4000")
    assert real[: len(expected)] == expected


def test_tls_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/tls.md's blocks, with the CA and both trust stores in temporary folders; after
    `flux tls trust`, curl reads the (temporary) system store's certificate folder."""
    port = str(free_port())
    stores = tmp_path / "stores"
    steps = [b.replace("4000", port) for b in blocks(ROOT / "docs" / "tls.md", "sh")]
    steps = [
        b.replace("curl -s -i -H", f"curl -s -i --capath {stores}/etc/ssl/certs -H") for b in steps
    ]
    script = "trap 'kill %1 2>/dev/null || true' EXIT\n" + "\n".join(steps)
    monkeypatch.setenv("FLUX_CA_DIR", str(tmp_path / "ca"))  # never the user's own
    monkeypatch.setenv("FLUX_TRUST_SYSTEM_ROOT", str(stores))
    monkeypatch.setenv("FLUX_TRUST_NSS_DB", str(tmp_path / "nssdb"))
    result = shell(script, tmp_path)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert output.count("HTTP/2 200") == 2, output  # --cacert, then the trusted store
    assert "Hello, Ada!" in output and "Hello, Bob!" in output
    assert "system store: added" in output and "NSS store: removed" in output
