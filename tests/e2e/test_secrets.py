"""Secrets (docs/secrets.md), through the real `flux` command and `flux serve`.

A sentinel secret is read, used, printed and raised by a python, a node and a deno function
(and an async one); it must reach them and appear nowhere else: not in .flux/traces.db or
queue.db, the gateway's output, `flux trace --json`, or any answer. Undeclared functions get
neither the secret nor the gateway's own environment; a `flux secrets set` while serving reaches
the next call after 1 s and leaves unrelated workers alone; a deploy naming an unset secret is
refused and the live deployment stays.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from conftest import FLUX, bearer, flux, serve, write_function

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SENTINEL = "snt-7f3a9c1e-Zq8+/w==-" + "x" * 20
# All three, always: CI installs node and deno (scripts/setup), and a secret test that quietly
# skips a runtime would hide a leak there.
RUNTIMES = ["python", "node", "deno"]

PY_USE = """
import base64, hashlib, os, urllib.parse
def handler(request, ctx):
    value = os.environ["SENTINEL_KEY"]
    print("plain:", value)
    print("url:", urllib.parse.quote(value, safe=""))
    print("b64:", base64.b64encode(("user:" + value).encode()).decode())
    if dict(request["query"]).get("fail"):
        raise RuntimeError("bad key " + value)
    return {"length": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}
"""
JS_USE = """
const env = (n) => (globalThis.Deno ? Deno.env.get(n) : process.env[n]);
const b64 = (s) => btoa(s);
export default async function (req) {
  const value = env("SENTINEL_KEY");
  console.log("plain:", value);
  console.log("url:", encodeURIComponent(value));
  console.log("b64:", b64("user:" + value));
  if (new URL(req.url).searchParams.get("fail")) throw new Error("bad key " + value);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(value));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return { length: value.length, sha256: hex };
}
"""
PY_PEEK = """
import os
def handler(request, ctx):
    return {"names": sorted(os.environ)}
"""
JS_PEEK = """
export default async function () {
  if (!globalThis.Deno) return { names: Object.keys(process.env).sort() };
  // deno may read only the names it was given (--allow-env=...): toObject() is refused, so
  // ask for each name; a name not given is refused whether or not it is set.
  const names = [], refused = [];
  for (const name of ["SENTINEL_KEY", "GATEWAY_CANARY_VAR", "FLUX_FUNCTION"]) {
    try {
      if (Deno.env.get(name) !== undefined) names.push(name);
    } catch (error) {
      if (error.name === "NotCapable") refused.push(name);
    }
  }
  return { names, refused };
}
"""


def code(runtime: str, python: str, js: str) -> str:
    return python if runtime == "python" else js


def forms(value: str) -> list[str]:
    return [value, urllib.parse.quote(value, safe=""), base64.b64encode(value.encode()).decode()]


def setup_project(project: Path) -> str:
    for runtime in RUNTIMES:
        use = code(runtime, PY_USE, JS_USE)
        peek = code(runtime, PY_PEEK, JS_PEEK)
        write_function(
            project, f"use_{runtime}", use, runtime=runtime, secrets=["SENTINEL_KEY"], method="GET"
        )
        write_function(project, f"peek_{runtime}", peek, runtime=runtime, method="GET")
    write_function(project, "use_async", PY_USE, secrets=["SENTINEL_KEY"], method="GET")
    (project / "functions" / "use_async" / "flux.json").write_text(
        json.dumps(
            {"name": "use_async", "runtime": "python", "method": "GET", "async": True,
             "secrets": ["SENTINEL_KEY"]}
        )
    )  # fmt: skip
    flux(project, "secrets", "set", f"SENTINEL_KEY={SENTINEL}")
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "team")
    return flux(project, "api-keys", "create", "--name", "k").stdout.strip()


def test_sentinel_reaches_its_functions_and_nothing_else(project: Path) -> None:
    key = setup_project(project)
    answers: list[str] = []
    with (
        serve(project, env={"GATEWAY_CANARY_VAR": "canary-value-31337"}) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(key), timeout=30) as client,
    ):
        for runtime in RUNTIMES:
            ok = client.get(f"/use_{runtime}")
            answers.append(ok.text)
            assert ok.status_code == 200, ok.text
            assert ok.json() == {
                "length": len(SENTINEL),
                "sha256": hashlib.sha256(SENTINEL.encode()).hexdigest(),
            }, runtime
            failed = client.get(f"/use_{runtime}?fail=1")
            answers.append(failed.text)
            assert failed.status_code == 502 and "[secret:SENTINEL_KEY]" in failed.text
            peek = client.get(f"/peek_{runtime}")
            answers.append(peek.text)
            names = peek.json()["names"]
            assert "SENTINEL_KEY" not in names and "GATEWAY_CANARY_VAR" not in names, names
            if runtime == "deno":
                assert names == ["FLUX_FUNCTION"], peek.text  # a name it was given
                assert peek.json()["refused"] == ["SENTINEL_KEY", "GATEWAY_CANARY_VAR"]
        queued = client.get("/use_async?fail=1").json()["request_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = client.get(f"/_flux/invocations/{queued}")
            answers.append(job.text)
            if job.json()["status"] == "failed":
                break
            time.sleep(0.2)
        assert job.json()["status"] == "failed", job.text
        assert "[secret:SENTINEL_KEY]" in job.text
    listed = flux(project, "trace", "--last", "50", "--json").stdout
    ids = [item["request_id"] for item in json.loads(listed)]
    traces = listed + "".join(flux(project, "trace", rid, "--json").stdout for rid in ids)
    output = "".join(gw.output)
    assert "[secret:SENTINEL_KEY]" in traces  # printed lines were kept, redacted
    stored = b"".join(p.read_bytes() for p in (project / ".flux").glob("*.db*"))
    for form in forms(SENTINEL):
        assert form not in traces
        assert form not in output
        assert not any(form in answer for answer in answers)
        assert form.encode() not in stored
    # the base64 of "user:" + value, as the functions printed it, is caught too
    assert base64.b64encode(f"user:{SENTINEL}".encode()).decode()[8:-8] not in traces


def test_set_while_serving_reaches_next_call_and_spares_other_workers(project: Path) -> None:
    ident = (
        "import uuid\nWORKER = uuid.uuid4().hex\ndef handler(request, ctx):\n    return WORKER\n"
    )
    reader = "import os\ndef handler(r, c):\n    return os.environ['TOKEN']\n"
    write_function(project, "reader", reader, secrets=["TOKEN"], method="GET")
    write_function(project, "other", ident, method="GET")
    flux(project, "secrets", "set", "TOKEN=first-value")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    with (
        serve(project) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(key), timeout=30) as client,
    ):
        assert client.get("/reader").json() == "first-value"
        before = client.get("/other").json()
        flux(project, "secrets", "set", "TOKEN=second-value")
        time.sleep(1.0)  # the contract under test: live within 1 s, no deploy
        assert client.get("/reader").json() == "second-value"
        assert client.get("/other").json() == before  # same worker: not restarted
        flux(project, "secrets", "unset", "TOKEN")
        time.sleep(1.0)
        assert client.get("/reader").status_code == 502  # KeyError: no longer set


def test_deploy_naming_an_unset_secret_is_refused_and_live_stays(project: Path) -> None:
    write_function(project, "fine", "def handler(r, c):\n    return 'fine'\n", method="GET")
    flux(project, "deploy")
    before = json.loads(flux(project, "routes", "--json").stdout)
    write_function(project, "needy", "def handler(r, c):\n    return 1\n", secrets=["MISSING"])
    refused = flux(project, "deploy", check=False)
    assert refused.returncode == 1
    assert "flux secrets set MISSING" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert json.loads(flux(project, "routes", "--json").stdout) == before


def test_cli_never_prints_values_and_validates(project: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text(
        "# comment\nexport FIRST=one-value-1\nQUOTED='two words'\nMULTI=\"line one\nline two\"\n"
    )
    done = flux(project, "secrets", "set", "--env-file", str(env_file))
    piped = subprocess.run(
        [FLUX, "--project", str(project), "secrets", "set", "FROM_STDIN"],
        input="piped-value-9\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    listing = flux(project, "secrets", "list").stdout
    data = json.loads(flux(project, "secrets", "list", "--json").stdout)
    assert {d["name"] for d in data} == {"FIRST", "QUOTED", "MULTI", "FROM_STDIN"}
    multi = next(d for d in data if d["name"] == "MULTI")
    assert multi["sha256"] == hashlib.sha256(b"line one\nline two").hexdigest()[:12]
    piped_entry = next(d for d in data if d["name"] == "FROM_STDIN")
    assert piped_entry["sha256"] == hashlib.sha256(b"piped-value-9").hexdigest()[:12]
    for value in ("one-value-1", "two words", "line one", "piped-value-9"):
        assert value not in done.stdout + done.stderr + listing + json.dumps(data)
    for bad, message in [
        ("lower=x", "not a valid name"),
        ("FLUX_X=x", "reserved for the gateway"),
        ("BIG=" + "x" * (64 * 1024 + 1), "larger than 64 KiB"),
    ]:
        result = flux(project, "secrets", "set", bad, check=False)
        assert result.returncode == 1 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert flux(project, "secrets", "unset", "NOPE", check=False).returncode == 1
    flux(project, "secrets", "unset", "FIRST")
    assert "FIRST" not in flux(project, "secrets", "list").stdout
    mode = (project / ".flux" / "secrets.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_flux_dev_reads_functions_env_over_stored_values(project: Path) -> None:
    reader = (
        "import os\ndef handler(r, c):\n    return [os.environ['A_KEY'], os.environ['B_KEY']]\n"
    )
    write_function(project, "reader", reader, secrets=["A_KEY", "B_KEY"], method="GET")
    flux(project, "secrets", "set", "A_KEY=stored-a", "B_KEY=stored-b")
    dotenv = project / "functions" / ".env"
    dotenv.write_text("B_KEY='local b'\n")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    with (
        serve(project, command="dev") as gw,
        httpx.Client(base_url=gw.url, headers=bearer(key), timeout=30) as client,
    ):
        assert client.get("/reader").json() == ["stored-a", "local b"]
        dotenv.write_text("B_KEY=changed\nA_KEY=local-a\n")
        deadline = time.monotonic() + 5
        while client.get("/reader").json() != ["local-a", "changed"]:
            assert time.monotonic() < deadline, "functions/.env change not picked up"
            time.sleep(0.1)
    assert not list((project / ".flux" / "deployments").glob("*/functions/.env"))
    assert not [line for line in gw.output if "redeployed version" in line]  # no redeploy
