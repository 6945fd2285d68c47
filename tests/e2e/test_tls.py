"""HTTPS and HTTP/2 end to end: the real `flux serve --tls` on loopback (docs/tls.md).

One gateway serves every case of the comparison: each request is sent once over HTTP/1.1 and
once over HTTP/2 (both negotiated by ALPN), and the two answers must be the same answer.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from conftest import JS_RUNTIMES, RunningGateway, bearer, flux, key_for, serve, write_function

from fluxgw.tls import ensure_ca

pytestmark = pytest.mark.e2e

HEADERS_THAT_DIFFER = {"date", "x-request-id", "ratelimit"}  # per request, by design
PREFLIGHT = {
    "origin": "https://app.example",
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local CA of these tests: never the user's own (FLUX_CA_DIR)."""
    folder = tmp_path_factory.mktemp("flux-ca")
    ensure_ca(folder)  # made here once, so a client can trust it before the gateway starts
    saved = os.environ.get("FLUX_CA_DIR")
    os.environ["FLUX_CA_DIR"] = str(folder)
    yield folder
    if saved is None:
        del os.environ["FLUX_CA_DIR"]
    else:
        os.environ["FLUX_CA_DIR"] = saved


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca_dir: Path) -> Iterator[dict[str, Any]]:
    project = tmp_path_factory.mktemp("tls") / "proj"
    ok = "def handler(request, ctx):\n    return {'got': request['body']}\n"
    write_function(project, "echo", ok, route="/echo")
    write_function(project, "other", ok, route="/other")
    crash = "import os\ndef handler(request, ctx):\n    os._exit(3)\n"
    write_function(project, "crash", crash, route="/crash")
    slow = "import time\ndef handler(request, ctx):\n    time.sleep(10)\n"
    write_function(project, "slow", slow, route="/slow", timeout=1)
    flux(project, "deploy")
    keys = {
        "main": key_for(project, "main"),
        "scoped": key_for(project, "scoped", "--function", "other"),
        "drained": key_for(project, "drained"),
    }
    with serve(project, "--tls") as gw:
        assert gw.url.startswith("https://127.0.0.1:"), gw.url
        yield {"project": project, "gw": gw, "keys": keys, "ca": ca_dir / "flux-ca.pem"}


def client(site: dict[str, Any], http2: bool) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(site["ca"]))  # verification on
    return httpx.Client(base_url=site["gw"].url, verify=verify, http2=http2, timeout=30)


def drain(site: dict[str, Any]) -> None:
    with client(site, http2=True) as c:
        for _ in range(130):  # free plan: burst 120
            if c.get("/echo", headers=bearer(site["keys"]["drained"])).status_code == 429:
                return
    raise AssertionError("the drained key was never refused")


CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (method, path, what to send; "key" names a key of the site)
    "200": ("POST", "/echo", {"key": "main", "json": {"n": 1}}),
    "401": ("POST", "/echo", {}),
    "403": ("POST", "/echo", {"key": "scoped"}),
    "404": ("GET", "/nope", {"key": "main"}),
    "413": ("POST", "/echo", {"key": "main", "content": b"x" * (6 * 1024 * 1024 + 1)}),
    "429": ("GET", "/echo", {"key": "drained"}),
    "502": ("POST", "/crash", {"key": "main"}),
    "504": ("POST", "/slow", {"key": "main"}),
    "preflight": ("OPTIONS", "/echo", {"headers": PREFLIGHT}),
}


def answer(site: dict[str, Any], http2: bool, method: str, path: str, send: dict) -> dict:
    """What a client sees, less what differs per request by design."""
    headers = {"origin": "https://app.example", **send.get("headers", {})}
    if "key" in send:
        headers.update(bearer(site["keys"][send["key"]]))
    with client(site, http2) as c:
        r = c.request(
            method, path, headers=headers, json=send.get("json"), content=send.get("content")
        )
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert len(r.headers["x-request-id"]) == 32
    body: Any = r.content
    if r.headers.get("content-type") == "application/json":
        body = r.json()
        if isinstance(body, dict) and "request_id" in body:
            assert body.pop("request_id") == r.headers["x-request-id"]
    fields = {k: v for k, v in r.headers.items() if k not in HEADERS_THAT_DIFFER}
    return {
        "status": r.status_code,
        "headers": fields,
        "body": body,
        "rl": "ratelimit" in r.headers,
    }


@pytest.mark.parametrize("case", list(CASES))
def test_http2_answers_exactly_as_http11(site: dict[str, Any], case: str) -> None:
    method, path, send = CASES[case]
    if case == "429":
        drain(site)
    h1 = answer(site, False, method, path, send)
    h2 = answer(site, True, method, path, send)
    expected = 204 if case == "preflight" else int(case)
    assert h1["status"] == expected, h1
    assert h2 == h1
    if case == "preflight":
        assert h2["headers"]["access-control-allow-origin"] == "https://app.example"
    else:
        assert h2["headers"]["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in h2["headers"]["access-control-expose-headers"].lower()


def test_an_http2_body_without_content_length_reaches_the_function(
    site: dict[str, Any],
) -> None:
    """HTTP/2 frames a body by its stream's end; Content-Length is optional there."""

    def parts() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    for http2 in (True, False):  # HTTP/1.1 sends the same body chunked
        with client(site, http2) as c:
            r = c.post("/echo", headers=bearer(site["keys"]["main"]), content=parts())
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert r.request.headers.get("content-length") is None
        assert (r.status_code, r.json()) == (200, {"got": "hello world"})


@pytest.mark.parametrize("size_mib", [8, 20])  # 20: past what the gateway reads of a refused body
def test_a_large_body_to_a_refused_request_leaves_the_gateway_serving(
    site: dict[str, Any], size_mib: int
) -> None:
    """hypercorn 0.18 ended the server on DATA for an answered stream (fluxgw/http2.py)."""
    with client(site, http2=True) as c:
        refused = c.post("/echo", content=b"x" * (size_mib * 1024 * 1024))
        too_large = c.post(
            "/echo", headers=bearer(site["keys"]["main"]), content=b"x" * (size_mib * 1024 * 1024)
        )
        health = c.get("/_flux/health")
    assert (refused.status_code, too_large.status_code, health.status_code) == (401, 413, 200)
    assert health.http_version == "HTTP/2"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "--max-time", "20", *args], capture_output=True, text=True, timeout=30
    )


def test_curl_http2_with_the_ca_file(site: dict[str, Any]) -> None:
    ca = flux(None, "tls", "ca").stdout.strip()
    assert Path(ca) == site["ca"]
    got = curl(
        "--http2", "--cacert", ca, "-i", "-H", f"Authorization: Bearer {site['keys']['main']}",
        "-H", "content-type: application/json", "-d", '{"from": "curl"}',
        site["gw"].url.replace("127.0.0.1", "localhost") + "/echo",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("HTTP/2 200"), got.stdout
    assert got.stdout.rstrip().endswith('{"got": {"from": "curl"}}')


def test_without_the_ca_the_certificate_is_refused(site: dict[str, Any]) -> None:
    got = curl("--http2", site["gw"].url + "/_flux/health")
    assert got.returncode == 60, got  # curl: peer certificate cannot be authenticated


def test_an_h2c_upgrade_over_tls_http11_is_ignored(site: dict[str, Any]) -> None:
    got = curl(
        "--http1.1", "--cacert", str(site["ca"]), "-o", "/dev/null", "-w", "%{http_version}",
        "-H", "Connection: Upgrade, HTTP2-Settings", "-H", "Upgrade: h2c",
        "-H", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", site["gw"].url + "/_flux/health",
    )  # fmt: skip
    assert got.stdout == "1.1", got


@pytest.fixture
def plain(project: Path) -> Iterator[RunningGateway]:
    write_function(project, "echo", "def handler(request, ctx):\n    return 'hi'\n")
    flux(project, "deploy")
    with serve(project) as gw:
        yield gw


def test_cleartext_h2c_upgrade_is_refused_prior_knowledge_is_served(
    plain: RunningGateway,
) -> None:
    """docs/tls.md: no Upgrade: h2c (h2c smuggling), HTTP/2 with prior knowledge works."""
    url = plain.url + "/_flux/health"
    upgrade = curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
    assert upgrade.stdout == "1.1 200", upgrade
    prior = curl(
        "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url
    )
    assert prior.stdout == "2 200", prior


CALLER = {
    "python": """import json, urllib.request
def handler(request, ctx):
    h = request['headers']
    req = urllib.request.Request(h['x-target'], headers={'authorization': h['x-inner']})
    with urllib.request.urlopen(req, timeout=20) as r:  # default context: verification on
        return {'via': 'python', 'got': json.loads(r.read())}
""",
    "node": """export default async function (req) {
  const r = await fetch(req.headers.get('x-target'),
                        {headers: {authorization: req.headers.get('x-inner')}});
  return {via: 'node', got: await r.json()};
}
""",
}
CALLER["deno"] = CALLER["node"].replace("'node'", "'deno'")


@pytest.mark.parametrize("runtime", [pytest.param("python"), *JS_RUNTIMES])
def test_a_function_calls_another_over_https_with_verification_on(
    project: Path, ca_dir: Path, runtime: str
) -> None:
    write_function(
        project, "target", "def handler(request, ctx):\n    return 'pong'\n", method="GET"
    )
    write_function(project, "caller", CALLER[runtime], runtime=runtime, route="/caller")
    flux(project, "deploy")
    key = key_for(project)
    with serve(project, "--tls") as gw:
        port = gw.url.rsplit(":", 1)[1]
        target = f"https://localhost:{port}/target"
        verify = ssl.create_default_context(cafile=str(ca_dir / "flux-ca.pem"))
        with httpx.Client(verify=verify, timeout=60) as c:
            r = c.post(
                gw.url + "/caller",
                headers={**bearer(key), "x-target": target, "x-inner": f"Bearer {key}"},
            )
    assert r.status_code == 200, r.text
    assert r.json() == {"via": runtime, "got": "pong"}


def test_tls_and_http2_on_the_asyncio_loop(project: Path, ca_dir: Path) -> None:
    write_function(project, "echo", "def handler(request, ctx):\n    return 'hi'\n")
    flux(project, "deploy")
    key = key_for(project)
    verify = ssl.create_default_context(cafile=str(ca_dir / "flux-ca.pem"))
    with (
        serve(project, "--tls", "--loop", "asyncio") as gw,
        httpx.Client(base_url=gw.url, verify=verify, http2=True, timeout=30) as c,
    ):
        ok = c.post("/echo", headers=bearer(key))
        refused = c.post("/echo", content=b"x" * (8 * 1024 * 1024))
        health = c.get("/_flux/health")
    assert (ok.status_code, ok.json(), ok.http_version) == (200, "hi", "HTTP/2")
    assert (refused.status_code, health.status_code) == (401, 200)


def test_dev_serves_https_too(project: Path, ca_dir: Path) -> None:
    write_function(project, "echo", "def handler(request, ctx):\n    return 'hi'\n")
    with serve(project, "--tls", command="dev") as gw:
        got = curl("--cacert", str(ca_dir / "flux-ca.pem"), "-w", " %{http_version}",
                   gw.url + "/_flux/health")  # fmt: skip
    assert gw.url.startswith("https://")
    assert got.returncode == 0 and got.stdout.endswith(" 2"), got


@pytest.fixture
def given(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "other")}
    ca.cert_pem.write_to_path(paths["ca"])
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    ca.issue_cert("localhost").private_key_pem.write_to_path(paths["other"])
    return paths


def test_a_given_certificate_is_served(project: Path, given: dict[str, Path]) -> None:
    write_function(project, "echo", "def handler(request, ctx):\n    return 'hi'\n")
    flux(project, "deploy")
    with serve(project, "--tls-cert", str(given["cert"]), "--tls-key", str(given["key"])) as gw:
        got = curl("--http2", "--cacert", str(given["ca"]), "-w", " %{http_version}",
                   gw.url + "/_flux/health")  # fmt: skip
    assert got.returncode == 0 and got.stdout.endswith(" 2"), got


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("cert", "other"), "the key does not belong to the certificate"),
        (("cert", "missing"), "no such file"),
        (("key", "key"), "not a PEM certificate"),
        (("cert", None), "--tls-cert and --tls-key go together"),
    ],
)
def test_bad_given_files_are_one_line_not_a_traceback(
    project: Path, given: dict[str, Path], files: tuple[str, str | None], message: str
) -> None:
    args = ["--tls-cert", str(given.get(files[0], project / "missing.pem"))]
    if files[1]:
        args += ["--tls-key", str(given.get(files[1], project / "missing.pem"))]
    result = flux(project, "serve", "--port", "0", *args, check=False, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
