"""User tokens through the real `flux serve` (docs/auth.md).

Tokens are signed by tests/signing.py (cryptography and hmac, not PyJWT); key sets are served
by a real HTTP server on loopback; settings are changed with the real `flux project update`.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import FLUX, SERVER_LOOPS, bearer, flux, key_for, serve, write_function
from signing import AUDIENCE, ISSUER, EcKey, JwksServer, RsaKey, claims, hs256

from fluxgw.state import StateDir

SECRET = b"correct horse battery staple, 40 bytes!!"
WHO = """
def handler(request, ctx):
    return {"auth": ctx.auth, "authorization": request["headers"].get("authorization"),
            "flux_headers": sorted(h for h in request["headers"] if h.startswith("x-flux-"))}
"""
WHO_JS = """
export default async function (req, ctx) {
  const fluxHeaders = [...req.headers.keys()].filter((h) => h.startsWith("x-flux-"));
  return {auth: ctx.auth, authorization: req.headers.get("authorization"), fluxHeaders};
}
"""


@pytest.fixture
def tokens_project(project: Path) -> Path:
    write_function(project, "either", WHO, route="/either", method="GET", auth=["key", "jwt"])
    write_function(project, "users", WHO, route="/users", method="GET", auth="jwt")
    write_function(project, "keys", WHO, route="/keys", method="GET")
    write_function(
        project, "users_js", WHO_JS, runtime="node", route="/users-js", method="GET", auth="jwt"
    )
    flux(project, "deploy")
    return project


def set_secret(project: Path, secret: bytes = SECRET, *extra: str) -> None:
    subprocess.run(
        [FLUX, "--project", str(project), "project", "update", "--jwt-secret-stdin", *extra],
        input=secret + b"\n",
        check=True,
        capture_output=True,
        timeout=60,
    )


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["request_id"] == response.headers["x-request-id"]
    return body["message"]


def test_tokens_and_keys_reach_the_function_as_ctx_auth(tokens_project: Path) -> None:
    set_secret(tokens_project, SECRET, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE)
    key = key_for(tokens_project)
    token = hs256(SECRET, claims("ada", role="admin"))
    with serve(tokens_project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        forged = {"x-flux-auth": "admin", "X-Flux-Subject": "root"}
        as_user = client.get("/either", headers={**bearer(token), **forged})
        assert as_user.status_code == 200, as_user.text
        seen = as_user.json()
        assert seen["auth"]["type"] == "jwt"
        assert (seen["auth"]["subject"], seen["auth"]["issuer"]) == ("ada", ISSUER)
        assert seen["auth"]["claims"]["role"] == "admin"
        assert seen["authorization"] == f"Bearer {token}"  # a verified token is forwarded
        assert seen["flux_headers"] == []  # client-sent x-flux-* never reach the function
        assert as_user.headers["ratelimit-policy"] and as_user.headers["ratelimit"]

        as_key = client.get("/either", headers={**bearer(key), **forged}).json()
        assert as_key == {
            "auth": {"type": "key", "key_name": "k"},
            "authorization": None,  # an API key never is
            "flux_headers": [],
        }

        js = client.get("/users-js", headers={**bearer(token), **forged})
        assert js.status_code == 200, js.text
        assert js.json()["auth"]["subject"] == "ada"
        assert js.json()["authorization"] == f"Bearer {token}"
        assert js.json()["fluxHeaders"] == []

        # the wrong kind of credential: 401 saying which one the function takes
        message = error_of(client.get("/keys", headers=bearer(token)), 401, "wrong_credential")
        assert "takes an API key" in message and "not a user token" in message
        refused = client.get("/users", headers=bearer(key))
        message = error_of(refused, 401, "wrong_credential")
        assert "takes a user token" in message and "not an API key" in message
        assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert client.get("/users", headers=bearer(token)).status_code == 200
        assert client.get("/keys", headers=bearer(key)).json()["auth"]["type"] == "key"
        # the gateway's own endpoints take keys only
        metrics = client.get("/_flux/metrics", headers=bearer(token))
        assert "takes an API key" in error_of(metrics, 401, "wrong_credential")


def test_refused_tokens_answer_rfc_6750_with_cors(tokens_project: Path) -> None:
    set_secret(tokens_project, SECRET, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE)
    origin = {"origin": "http://127.0.0.1:9"}
    cases = [
        (hs256(SECRET, claims(now=time.time() - 4000)), "token_expired", "expired"),
        (hs256(SECRET, claims(nbf=time.time() + 600)), "invalid_token", "not valid yet"),
        (hs256(SECRET, claims(aud="other")), "invalid_token", "audience"),
        (hs256(SECRET, claims(iss="https://evil.example")), "invalid_token", "issuer"),
        (hs256(b"w" * 40, claims()), "invalid_token", "signature"),
        (hs256(SECRET, claims(pad="x" * 9216)), "invalid_token", "8 KiB"),
    ]
    with serve(tokens_project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        for token, code, words in cases:
            answer = client.get("/users", headers={**bearer(token), **origin})
            message = error_of(answer, 401, code)
            assert words in message
            assert answer.headers["www-authenticate"] == (
                f'Bearer error="invalid_token", error_description="{message}"'
            )
            assert answer.headers["access-control-allow-origin"] == origin["origin"]
            assert "www-authenticate" in answer.headers["access-control-expose-headers"].lower()
            assert "ratelimit" not in answer.headers  # a refused token counts against no one


@pytest.mark.timing
@SERVER_LOOPS
def test_key_sets_from_a_url_and_settings_reach_a_running_gateway(project: Path, loop: str) -> None:
    write_function(project, "users", WHO, route="/users", method="GET", auth="jwt")
    flux(project, "deploy")
    rsa_key, ec_key = RsaKey("rsa-1"), EcKey("ec-1")
    with (
        JwksServer(rsa_key, ec_key) as provider,
        serve(project, loop=loop) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        token = ec_key.sign(claims("bob"))
        assert client.get("/users", headers=bearer(token)).status_code == 401  # no settings yet
        flux(project, "project", "update", "--jwt-jwks-url", provider.url, "--jwt-issuer", ISSUER)
        changed_at = time.monotonic()
        while (answer := client.get("/users", headers=bearer(token))).status_code != 200:
            assert time.monotonic() - changed_at < 1.0, answer.text
            time.sleep(0.02)
        assert answer.json()["auth"]["subject"] == "bob"
        by_rsa = client.get("/users", headers=bearer(rsa_key.sign(claims("cy"))))
        assert by_rsa.json()["auth"]["subject"] == "cy"

        unknown = client.get("/users", headers=bearer(RsaKey("stranger").sign(claims())))
        assert "not in the project's key set" in error_of(unknown, 401, "invalid_token")
        assert provider.requests == 2  # first fetch, and one refetch for the unknown kid

        # a token for another audience is accepted until the project names its own
        other_audience = bearer(ec_key.sign(claims("bob", aud="another-app")))
        assert client.get("/users", headers=other_audience).status_code == 200
        flux(project, "project", "update", "--jwt-audience", AUDIENCE)
        changed_at = time.monotonic()
        while client.get("/users", headers=other_audience).status_code != 401:
            assert time.monotonic() - changed_at < 1.0
            time.sleep(0.02)
        shown = json.loads(flux(project, "project", "show", "--json").stdout)["jwt"]
        assert shown == {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "key_source": "jwks_url",
            "jwks_url": provider.url,
            "algorithms": "from the key set (RS256, PS256, ES256, EdDSA)",
        }
        flux(project, "project", "update", "--jwt-clear")
        cleared_at = time.monotonic()
        while client.get("/users", headers=bearer(token)).status_code != 401:
            assert time.monotonic() - cleared_at < 1.0
            time.sleep(0.02)


def test_secret_settings_mint_and_traces(tokens_project: Path) -> None:
    set_secret(tokens_project, SECRET, "--jwt-issuer", ISSUER)
    state = StateDir(tokens_project)
    settings_file = state.root / "jwt.json"
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    shown = flux(tokens_project, "project", "show").stdout
    shown_json = flux(tokens_project, "project", "show", "--json").stdout
    for text in (shown, shown_json):
        assert "HS256" in text and ISSUER in text
        assert SECRET.decode() not in text and 'secret":' not in text
    token = flux(
        tokens_project, "jwt", "mint", "--sub", "dev-1", "--ttl", "10m", "--claim", "plan=pro"
    ).stdout.strip()
    with serve(tokens_project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        answer = client.get("/users", headers=bearer(token))
        assert answer.status_code == 200, answer.text
        auth = answer.json()["auth"]
        assert (auth["subject"], auth["issuer"], auth["claims"]["plan"]) == ("dev-1", ISSUER, "pro")
        assert auth["claims"]["exp"] - auth["claims"]["iat"] == 600
        request_id = answer.headers["x-request-id"]
        written_by = time.monotonic() + 10  # the trace writer batches: poll until it is there
        while (
            found := flux(tokens_project, "trace", request_id, "--json", check=False)
        ).returncode:
            assert time.monotonic() < written_by, found.stderr
            time.sleep(0.05)
        trace = json.loads(found.stdout)
        shown_trace = flux(tokens_project, "trace", request_id).stdout
    assert f"user token   dev-1 ({ISSUER})" in shown_trace and token not in shown_trace
    gateway_span = next(s for s in trace["spans"] if s["name"] == "gateway")
    attributes = gateway_span["attributes"]
    assert (attributes["mode"], attributes["subject"], attributes["issuer"]) == (
        "jwt",
        "dev-1",
        ISSUER,
    )
    assert "kid" in attributes
    assert token not in json.dumps(trace)
    signature = token.split(".")[2]
    for path in state.root.glob("traces.db*"):
        assert signature.encode() not in path.read_bytes(), path

    # minting needs the secret: a key-set project cannot mint, a project without settings either
    flux(tokens_project, "project", "update", "--jwt-clear")
    refused = flux(tokens_project, "jwt", "mint", "--sub", "x", check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "no token settings" in refused.stderr


def test_project_update_refusals(tokens_project: Path, tmp_path: Path) -> None:
    def refused(*args: str, code: int = 1) -> str:
        result = flux(tokens_project, "project", "update", *args, check=False)
        assert result.returncode == code, result
        assert result.stderr.startswith("flux: error:") or code == 2
        return result.stderr

    assert "key source" in refused("--jwt-issuer", ISSUER)
    assert "https" in refused("--jwt-jwks-url", "http://example.com/jwks")
    refused("--jwt-jwks-url", "https://a.example", "--jwt-secret-stdin", code=2)
    private = tmp_path / "private.json"
    key = EcKey("p")
    private.write_text(json.dumps({"keys": [{**key.jwk(), "d": "AAAA"}]}))
    assert "public keys only" in refused("--jwt-jwks-file", str(private))
    symmetric = tmp_path / "oct.json"
    symmetric.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    assert "no usable signing key" in refused("--jwt-jwks-file", str(symmetric))
    short = subprocess.run(
        [FLUX, "--project", str(tokens_project), "project", "update", "--jwt-secret-stdin"],
        input=b"short\n",
        capture_output=True,
        timeout=60,
    )
    assert short.returncode == 1 and b"at least 32" in short.stderr
    pem = subprocess.run(
        [FLUX, "--project", str(tokens_project), "project", "update", "--jwt-secret-stdin"],
        input=RsaKey("pem").public_pem(),
        capture_output=True,
        timeout=60,
    )
    assert pem.returncode == 1 and b"not a shared secret" in pem.stderr
    assert not (StateDir(tokens_project).root / "jwt.json").exists()  # nothing was written


@pytest.mark.timing
def test_key_set_file(tokens_project: Path, tmp_path: Path) -> None:
    key = EcKey("file-key")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.jwk()]}))
    flux(tokens_project, "project", "update", "--jwt-jwks-file", str(jwks))
    jwks.unlink()  # the key set was copied into the project: the file is no longer needed
    shown = json.loads(flux(tokens_project, "project", "show", "--json").stdout)["jwt"]
    assert shown["kids"] == ["file-key"] and shown["algorithms"] == ["ES256"]
    with serve(tokens_project) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        answer = client.get("/users", headers=bearer(key.sign(claims("eve"))))
        assert answer.json()["auth"]["subject"] == "eve"
        # a secret replaces the key set: never both
        set_secret(tokens_project)
        changed_at = time.monotonic()
        while client.get("/users", headers=bearer(key.sign(claims()))).status_code != 401:
            assert time.monotonic() - changed_at < 1.0
            time.sleep(0.02)
        assert client.get("/users", headers=bearer(hs256(SECRET, claims()))).status_code == 200


def test_auth_field_is_validated_at_deploy(project: Path) -> None:
    write_function(project, "good", WHO, auth=["jwt", "key"])
    deployed = flux(project, "deploy")
    assert "function good takes user tokens, but the project has no token settings" in (
        deployed.stderr
    )
    write_function(project, "bad", WHO, auth="oauth")
    result = flux(project, "deploy", check=False)
    assert result.returncode == 1
    assert "functions/bad/flux.json: field 'auth'" in result.stderr
    routes = json.loads(flux(project, "routes", "--json").stdout)
    assert [f["auth"] for f in routes["functions"]] == [["key", "jwt"]]  # last good one live
