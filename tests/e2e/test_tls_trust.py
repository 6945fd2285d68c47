"""`flux tls trust` / `untrust` against temporary stores, and a real Chromium over HTTP/2.

Nothing here touches the machine's own trust: the system store is a temporary root
(``--system-root`` / ``$FLUX_TRUST_SYSTEM_ROOT``) and the NSS db sits in a temporary HOME
(``--nss-db`` / ``$FLUX_TRUST_NSS_DB``); the CA itself is a temporary one (``$FLUX_CA_DIR``).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import PageServer, flux, key_for, serve, write_function
from test_browser import CHROMIUM, visit

pytestmark = pytest.mark.e2e

NICKNAME_PREFIX = "flux local CA "


def curl_capath(capath: Path, url: str) -> int:
    """curl with the default bundle plus a certificate folder; no -k, no --cacert."""
    return subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--max-time", "20", "--capath", str(capath), url],
        timeout=30,
    ).returncode


def nss_nicknames(db: Path) -> str:
    listing = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, timeout=30
    )
    return listing.stdout


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, Path]:
    return {
        "ca": tmp_path / "ca",
        "root": tmp_path / "system",
        "home": tmp_path / "home",
        "nss": tmp_path / "home" / ".pki" / "nssdb",  # where Chromium on Linux looks
    }


def env_of(stores: dict[str, Path]) -> dict[str, str]:
    return {
        "FLUX_CA_DIR": str(stores["ca"]),
        "FLUX_TRUST_SYSTEM_ROOT": str(stores["root"]),
        "FLUX_TRUST_NSS_DB": str(stores["nss"]),
    }


def test_trust_then_untrust_in_temporary_system_and_nss_stores(
    project: Path, stores: dict[str, Path]
) -> None:
    env = env_of(stores)
    write_function(project, "echo", "def handler(request, ctx):\n    return 'hi'\n")
    flux(project, "deploy")
    with serve(project, "--tls", env=env) as gw:
        url = gw.url.replace("127.0.0.1", "localhost") + "/_flux/health"
        certs = stores["root"] / "etc" / "ssl" / "certs"
        certs.mkdir(parents=True)
        assert curl_capath(certs, url) == 60  # not trusted yet

        trusted = flux(None, "tls", "trust", env=env)
        assert "system store: added" in trusted.stdout and "NSS store: added" in trusted.stdout
        assert curl_capath(certs, url) == 0
        assert NICKNAME_PREFIX in nss_nicknames(stores["nss"])

        untrusted = flux(None, "tls", "untrust", env=env)
        assert "system store: removed" in untrusted.stdout, untrusted.stdout
        assert curl_capath(certs, url) == 60
        assert NICKNAME_PREFIX not in nss_nicknames(stores["nss"])
    ca = stores["root"] / "usr" / "local" / "share" / "ca-certificates" / "flux-local-ca.crt"
    assert not ca.exists()


def test_trust_refuses_clearly_without_permission(tmp_path: Path) -> None:
    root = tmp_path / "system"
    (root / "usr" / "local" / "share").mkdir(parents=True)
    (root / "usr" / "local" / "share").chmod(0o500)
    try:
        result = flux(
            None, "tls", "trust", "--store", "system", "--system-root", str(root),
            check=False, env={"FLUX_CA_DIR": str(tmp_path / "ca")},
        )  # fmt: skip
    finally:
        (root / "usr" / "local" / "share").chmod(0o700)
    if result.returncode == 0:
        pytest.skip("running as root: permissions do not refuse anything")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "run it with sudo" in result.stderr


PAGE = """<!doctype html><meta charset="utf-8"><title>flux h2</title>
<script>
(async () => {
  const url = "%(gateway)s/echo";
  let result;
  try {
    const r = await fetch(url, {method: "POST",
        headers: {"Authorization": "Bearer %(key)s", "Content-Type": "application/json"},
        body: JSON.stringify({from: "chromium"})});
    result = {status: r.status, body: await r.text(), requestId: r.headers.get("x-request-id"),
              origin: location.origin};
  } catch (e) {
    result = {error: String(e)};
  }
  await fetch("/report", {method: "POST", body: JSON.stringify(result)});
})();
</script>"""


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup --test)")
def test_chromium_trusting_the_nss_db_calls_a_function_cross_origin_over_h2(
    project: Path, stores: dict[str, Path], tmp_path: Path
) -> None:
    env = env_of(stores)
    write_function(
        project, "echo", "def handler(request, ctx):\n    return {'got': request['body']}\n"
    )
    flux(project, "deploy")
    key = key_for(project)
    flux(None, "tls", "trust", "--store", "nss", env=env)
    with serve(project, "--tls", env=env) as gw:
        gateway = gw.url.replace("127.0.0.1", "localhost")  # another origin than the page's
        leaf = (stores["ca"] / "localhost.pem", stores["ca"] / "localhost-key.pem")
        page = PageServer(PAGE % {"gateway": gateway, "key": key}, tls=leaf)
        try:
            report = visit(
                page.url,
                tmp_path / "profile",
                page,
                env={"HOME": str(stores["home"])},
                args=(f"--log-net-log={tmp_path / 'netlog.json'}",),
            )
        finally:
            page.close()
    assert report.get("status") == 200, report
    assert report["origin"].startswith("https://127.0.0.1:")
    assert json.loads(report["body"]) == {"got": {"from": "chromium"}}
    assert len(report["requestId"]) == 32
    # How Chromium spoke to the gateway, from its own network log. (performance's
    # nextHopProtocol is "" for a cross-origin entry without Timing-Allow-Origin.)
    port = gw.url.rsplit(":", 1)[1]
    netlog = (tmp_path / "netlog.json").read_text()
    protocols = re.findall(
        rf"endpoint = 127\.0\.0\.1:{port},.*?negotiated_protocol = (\w+)", netlog
    )
    assert protocols and set(protocols) == {"h2"}, protocols
