"""fluxgw.testing: the embedded gateway a user's test suite gets
(docs/reference.md#embedding-and-tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BOTH_LOOPS, write_function

from fluxgw.testing import FakeClock, open_gateway

pytestmark = BOTH_LOOPS

HELLO = "def handler(request, ctx):\n    return {'hi': request['query'].get('name', 'x')}\n"


@pytest.fixture
def hello_project(project: Path) -> Path:
    write_function(project, "hello", HELLO, route="/hello", method="GET")
    return project


@pytest.mark.parametrize("in_process", [False, True], ids=["socket", "in-process"])
async def test_real_pipeline_with_keys(hello_project: Path, in_process: bool) -> None:
    async with open_gateway(hello_project, in_process=in_process) as gw:
        assert (await gw.client.get("/hello")).status_code == 401
        key = gw.create_key("ci")
        response = await gw.client.get("/hello", params={"name": "ada"}, headers=gw.auth(key))
        assert response.status_code == 200
        assert response.json() == {"hi": "ada"}
        assert response.headers["x-request-id"]
        gw.revoke_key("ci")
        assert (await gw.client.get("/hello", headers=gw.auth(key))).status_code == 401
    if not in_process:
        assert gw.url.startswith("http://127.0.0.1:")


async def test_fake_clock_refills_without_sleeping(hello_project: Path) -> None:
    clock = FakeClock()
    async with open_gateway(hello_project, plan="free", clock=clock, in_process=True) as gw:
        key = gw.create_key("burst")
        statuses = [
            (await gw.client.get("/hello", headers=gw.auth(key))).status_code for _ in range(121)
        ]
        assert statuses.count(200) == 120 and statuses[-1] == 429
        gw.clock.advance(1.0)
        assert (await gw.client.get("/hello", headers=gw.auth(key))).status_code == 200
        assert (await gw.client.get("/hello", headers=gw.auth(key))).status_code == 429


async def test_set_plan_and_scoped_keys(hello_project: Path) -> None:
    async with open_gateway(hello_project, in_process=True) as gw:
        gw.set_plan("pro")
        key = gw.create_key("scoped", functions=["hello"])
        response = await gw.client.get("/hello", headers=gw.auth(key))
        assert '"pro";q=2000' in response.headers["ratelimit-policy"]


async def test_project_state_is_not_touched(hello_project: Path) -> None:
    async with open_gateway(hello_project) as gw:
        gw.create_key("ci")
    assert not (hello_project / ".flux").exists()  # the copy got the keys, not the project


async def test_two_gateways_run_side_by_side(hello_project: Path) -> None:
    async with open_gateway(hello_project) as one, open_gateway(hello_project) as two:
        assert one.url != two.url


async def test_redeploy_after_editing(hello_project: Path) -> None:
    async with open_gateway(hello_project, in_process=True) as gw:
        key = gw.create_key("ci")
        code = gw.project_dir / "functions" / "hello" / "main.py"
        code.write_text("def handler(request, ctx):\n    return 'v2'\n")
        gw.redeploy()
        assert (await gw.client.get("/hello", headers=gw.auth(key))).json() == "v2"


@pytest.fixture
def flux_project_dir(hello_project: Path) -> Path:
    return hello_project  # the plugin's fixture would look upward from pytest's rootdir


async def test_the_plugin_fixture_runs_on_anyio(flux_gateway) -> None:
    # The flux_gateway fixture of fluxgw's pytest plugin, run by anyio's pytest plugin on each
    # loop (the docs test covers it under pytest-trio's trio_mode).
    key = flux_gateway.create_key("ci")
    response = await flux_gateway.client.get(
        "/hello", params={"name": "bo"}, headers=flux_gateway.auth(key)
    )
    assert response.status_code == 200
    assert response.json() == {"hi": "bo"}


CALLER = """import urllib.request
def handler(request, ctx):
    h = request['headers']
    req = urllib.request.Request(h['x-target'], headers={'authorization': h['x-inner']})
    with urllib.request.urlopen(req, timeout=20) as r:  # verifies against SSL_CERT_FILE
        return {'inner': r.read().decode()}
"""


async def test_tls_serves_http2_with_a_test_ca_that_functions_trust(hello_project: Path) -> None:
    write_function(hello_project, "caller", CALLER, route="/caller")
    async with open_gateway(hello_project, tls=True) as gw:
        assert gw.url.startswith("https://127.0.0.1:")
        assert gw.ca_cert is not None and b"BEGIN CERTIFICATE" in gw.ca_cert.read_bytes()
        key = gw.create_key("ci")
        hello = await gw.client.get("/hello", params={"name": "tls"}, headers=gw.auth(key))
        assert (hello.status_code, hello.http_version) == (200, "HTTP/2")
        called = await gw.client.post(
            "/caller",
            headers={
                **gw.auth(key),
                "x-target": gw.url.replace("127.0.0.1", "localhost") + "/hello?name=inner",
                "x-inner": f"Bearer {key}",
            },
        )
        assert called.status_code == 200, called.text
        assert called.json() == {"inner": '{"hi": "inner"}'}
