"""CORS through the real server (docs/reference.md#cors): preflights before auth and quota, headers
on
every answer to an allowed origin, errors included."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import SERVER_LOOPS, flux, serve, write_function

ECHO = (
    "from fluxgw.runtime import Response\n"
    "def handler(request, ctx):\n"
    "    return Response(200, {'ok': True}, {'Vary': 'Accept-Encoding, origin'})\n"
)
APP = "http://app.localhost:3000"


@pytest.fixture
def cors_project(project: Path) -> Path:
    write_function(project, "echo", ECHO, route="/echo")
    flux(project, "deploy")
    return project


def remaining(response: httpx.Response) -> int:
    return int(response.headers["ratelimit"].split("r=")[1].split(";")[0])


@SERVER_LOOPS
def test_preflight_needs_no_key_and_costs_no_quota(cors_project: Path, loop: str) -> None:
    key = flux(cors_project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with serve(cors_project, loop=loop) as gw, httpx.Client(base_url=gw.url) as client:
        before = remaining(client.post("/echo", headers=auth))
        for _ in range(5):
            preflight = client.options(
                "/echo",
                headers={
                    "origin": APP,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization, content-type, x-custom",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == APP
            assert "POST" in preflight.headers["access-control-allow-methods"]
            allowed = preflight.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "x-custom"} <= {
                h.strip() for h in allowed.split(",")
            }
            assert int(preflight.headers["access-control-max-age"]) > 0
            assert "origin" in preflight.headers["vary"].lower()
            assert preflight.headers["x-request-id"]
        after = remaining(client.post("/echo", headers=auth))
        assert after == before - 1  # only the second POST counted


@SERVER_LOOPS
def test_every_answer_to_an_allowed_origin_has_cors_headers(cors_project: Path, loop: str) -> None:
    key = flux(cors_project, "api-keys", "create", "--name", "k").stdout.strip()
    with serve(cors_project, loop=loop) as gw, httpx.Client(base_url=gw.url) as client:
        for response in (
            client.post("/echo", headers={"origin": APP, "authorization": f"Bearer {key}"}),
            client.post("/echo", headers={"origin": APP}),  # 401
            client.get("/missing", headers={"origin": APP, "authorization": f"Bearer {key}"}),
        ):
            assert response.headers["access-control-allow-origin"] == APP, response.status_code
            exposed = response.headers["access-control-expose-headers"].lower()
            for name in ("x-request-id", "retry-after", "ratelimit", "ratelimit-policy"):
                assert name in exposed
            assert len(response.headers.get_list("vary")) == 1
        ok = client.post("/echo", headers={"origin": APP, "authorization": f"Bearer {key}"})
        vary = [v.strip().lower() for v in ok.headers["vary"].split(",")]
        assert sorted(vary) == ["accept-encoding", "origin"]  # merged, never duplicated


def test_allowlist_limits_writes_but_not_reads(cors_project: Path) -> None:
    write_function(
        cors_project, "read", "def handler(r, c):\n    return 1\n", route="/read", method="GET"
    )
    flux(cors_project, "deploy")
    flux(cors_project, "project", "update", "--cors-origin", APP)
    key = flux(cors_project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    other = "http://evil.localhost:666"
    with serve(cors_project) as gw, httpx.Client(base_url=gw.url) as client:
        allowed = client.post("/echo", headers={**auth, "origin": APP})
        assert allowed.headers["access-control-allow-origin"] == APP
        refused = client.post("/echo", headers={**auth, "origin": other})
        assert "access-control-allow-origin" not in refused.headers
        read = client.get("/read", headers={**auth, "origin": other})
        assert read.headers["access-control-allow-origin"] == other
        preflight = client.options(
            "/echo", headers={"origin": other, "access-control-request-method": "POST"}
        )
        assert preflight.status_code == 204
        assert "access-control-allow-origin" not in preflight.headers


WIDENING = (
    "from fluxgw.runtime import Response\n"
    "def handler(request, ctx):\n"
    "    return Response(200, {'ok': True}, {'Access-Control-Allow-Origin': '*',\n"
    "                    'RateLimit': 'lies', 'X-Own': 'kept'})\n"
)


def test_a_function_cannot_override_the_gateways_cors_or_limits(project: Path) -> None:
    write_function(project, "wide", WIDENING, route="/wide")
    flux(project, "deploy")
    flux(project, "project", "update", "--cors-origin", APP)
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    with serve(project) as gw, httpx.Client(base_url=gw.url) as client:
        other = client.post("/wide", headers={**auth, "origin": "http://evil.localhost:666"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers  # the allowlist holds
        assert other.headers["x-own"] == "kept"
        assert other.headers.get_list("ratelimit")[0].startswith('"free";r=')
        assert len(other.headers.get_list("ratelimit")) == 1
        allowed = client.post("/wide", headers={**auth, "origin": APP})
        assert allowed.headers.get_list("access-control-allow-origin") == [APP]
