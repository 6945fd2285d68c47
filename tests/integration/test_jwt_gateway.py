"""User tokens through the embedded gateway (``fluxgw.testing``): per-subject rate limits with a
clock that does not move, and the testing helpers a project's own suite would use."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import BOTH_LOOPS
from signing import hs256

from fluxgw.testing import IdentityProvider, open_gateway

pytestmark = BOTH_LOOPS  # key set fetches and the harness, on trio and on asyncio

WHO = "def handler(request, ctx):\n    return {'auth': ctx.auth}\n"


@pytest.fixture
def users_project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj" / "functions" / "who"
    folder.mkdir(parents=True)
    config = {"name": "who", "runtime": "python", "method": "GET", "auth": ["key", "jwt"]}
    (folder / "flux.json").write_text(json.dumps(config))
    (folder / "main.py").write_text(WHO)
    return tmp_path / "proj"


async def statuses(client: httpx.AsyncClient, path: str, token: str, count: int) -> list[int]:
    found: list[int] = []

    async def one() -> None:
        answer = await client.get(path, headers={"authorization": f"Bearer {token}"})
        found.append(answer.status_code)

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return found


async def test_each_subject_has_its_own_bucket(users_project: Path) -> None:
    async with open_gateway(users_project, plan="free") as gw:
        secret = gw.use_jwt_secret(issuer="https://id.test")
        now = gw.clock()
        ada = hs256(secret, {"iss": "https://id.test", "sub": "ada", "exp": now + 600})
        # a 404 path is cheap and still authenticated and rate limited (before routing)
        first = await statuses(gw.client, "/nothing", ada, 130)
        assert first.count(404) == 120 and first.count(429) == 10
        # the same subject with a freshly issued token: the same bucket, still empty
        again = hs256(secret, {"iss": "https://id.test", "sub": "ada", "exp": now + 900})
        assert await statuses(gw.client, "/nothing", again, 1) == [429]
        # another subject, and an API key, are unaffected
        bob = gw.mint_token("bob")
        assert (await statuses(gw.client, "/nothing", bob, 120)).count(404) == 120
        key = gw.create_key("ci")
        assert await statuses(gw.client, "/nothing", key, 1) == [404]
        # the same subject from another issuer is another user
        other = hs256(secret, {"iss": "https://other.test", "sub": "ada", "exp": now + 600})
        gw.use_jwt_secret(secret)  # no issuer check: both issuers accepted
        assert await statuses(gw.client, "/nothing", other, 1) == [404]
        gw.clock.advance(1)  # the bucket refills one request per second
        assert await statuses(gw.client, "/nothing", ada, 2) in ([404, 429], [429, 404])


async def test_identity_provider_helper_with_rotation(users_project: Path) -> None:
    with IdentityProvider(issuer="https://idp.test", audience="app") as idp:
        async with open_gateway(users_project) as gw:
            gw.use_identity_provider(idp)
            token = idp.token("user-7", claims={"role": "admin"})
            answer = await gw.client.get("/who", headers=gw.auth(token))
            assert answer.status_code == 200, answer.text
            auth = answer.json()["auth"]
            assert (auth["subject"], auth["issuer"], auth["claims"]["role"]) == (
                "user-7",
                "https://idp.test",
                "admin",
            )
            old_kid = idp.current_kid
            idp.rotate(algorithm="RS256")
            rotated = await gw.client.get("/who", headers=gw.auth(idp.token("user-7")))
            assert rotated.status_code == 200, rotated.text
            idp.retire(old_kid)
            gw.clock.advance(300)  # the cached key set is due
            stale = await gw.client.get("/who", headers=gw.auth(idp.token("u", kid=old_kid)))
            assert stale.status_code == 401 and stale.json()["error"] == "invalid_token"
            eddsa = idp.rotate(algorithm="EdDSA")
            gw.clock.advance(30)  # unknown kids refetch at most once per 30 s
            answer = await gw.client.get("/who", headers=gw.auth(idp.token("u", kid=eddsa)))
            assert answer.status_code == 200, answer.text


async def test_mint_token_needs_a_secret(users_project: Path) -> None:
    async with open_gateway(users_project, in_process=True) as gw:
        with pytest.raises(ValueError, match="use_jwt_secret"):
            gw.mint_token("x")
        gw.use_jwt_secret()
        expired = gw.mint_token("x", ttl=60)
        gw.clock.advance(121)
        answer = await gw.client.get("/who", headers=gw.auth(expired))
        assert answer.status_code == 401 and answer.json()["error"] == "token_expired"
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
