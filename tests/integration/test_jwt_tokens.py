"""User-token verification against independently signed tokens (docs/auth.md).

Tokens are built by tests/signing.py with `cryptography` and hmac directly, never with PyJWT,
and key sets are served by a real HTTP server on loopback. Time is a fake clock: token
lifetimes and the key set cache move only when the test says so.
"""

from __future__ import annotations

import base64

import pytest
from conftest import BOTH_LOOPS
from signing import AUDIENCE, ISSUER, EcKey, JwksServer, RsaKey, claims, encode, hs256, unsigned

from fluxgw.auth.config import TokenSettings
from fluxgw.auth.jwks import MAX_TTL, MIN_TTL, cache_ttl
from fluxgw.auth.jwt_verify import TokenError
from fluxgw.auth.tokens import KeysUnavailable, TokenVerifier
from fluxgw.testing import FakeClock

pytestmark = BOTH_LOOPS  # the key set cache fetches with httpx on either loop

SECRET = b"s" * 40


@pytest.fixture(scope="module")
def rsa_key() -> RsaKey:
    return RsaKey("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> EcKey:
    return EcKey("ec-1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def jwks_verifier(url: str, clock: FakeClock, **rules: str | None) -> TokenVerifier:
    options = {"issuer": ISSUER, "audience": AUDIENCE, **rules}
    return TokenVerifier(TokenSettings("jwks_url", jwks_url=url, **options), clock)


def secret_verifier(clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(
        TokenSettings("secret", issuer=ISSUER, audience=AUDIENCE, secret=SECRET), clock
    )


async def refused(verifier: TokenVerifier, token: str) -> TokenError:
    with pytest.raises(TokenError) as caught:
        await verifier.verify(token)
    return caught.value


async def test_rs256_and_es256_from_a_served_key_set(
    rsa_key: RsaKey, ec_key: EcKey, clock: FakeClock
) -> None:
    with JwksServer(rsa_key, ec_key) as server:
        verifier = jwks_verifier(server.url, clock)
        by_rsa = await verifier.verify(rsa_key.sign(claims("ada", now=clock(), role="admin")))
        by_ec = await verifier.verify(ec_key.sign(claims("bob", now=clock())))
    assert (by_rsa.kind, by_rsa.name, by_rsa.issuer, by_rsa.kid) == ("jwt", "ada", ISSUER, "rsa-1")
    assert by_rsa.claims["role"] == "admin"
    assert by_rsa.context() == {
        "type": "jwt",
        "subject": "ada",
        "issuer": ISSUER,
        "claims": by_rsa.claims,
    }
    assert (by_ec.name, by_ec.kid) == ("bob", "ec-1")
    assert by_rsa.bucket != by_ec.bucket and by_rsa.bucket.startswith("jwt:")
    assert server.requests == 1  # one fetch served both


async def test_ps256_key_verifies_only_ps256(clock: FakeClock) -> None:
    pss = RsaKey("pss-1", alg="PS256")
    with JwksServer(pss) as server:
        verifier = jwks_verifier(server.url, clock)
        assert (await verifier.verify(pss.sign(claims(now=clock())))).kid == "pss-1"
        # the same RSA key, but the token claims RS256: the key's algorithm wins
        pss.alg = "RS256"
        error = await refused(verifier, pss.sign(claims(now=clock()), kid="pss-1"))
        pss.alg = "PS256"
    assert "algorithm" in error.message


async def test_hs256_from_the_project_secret(clock: FakeClock) -> None:
    principal = await secret_verifier(clock).verify(hs256(SECRET, claims("cy", now=clock())))
    assert (principal.name, principal.kid) == ("cy", None)
    wrong = await refused(secret_verifier(clock), hs256(b"x" * 40, claims(now=clock())))
    assert wrong.code == "invalid_token" and "signature" in wrong.message


async def test_time_claims_with_60_s_leeway(clock: FakeClock) -> None:
    verifier = secret_verifier(clock)
    now = clock()
    expired = await refused(verifier, hs256(SECRET, claims(now=now - 700, ttl=600)))
    assert expired.code == "token_expired"
    # 61 s past exp: expired; 30 s past: within the leeway
    assert (await refused(verifier, hs256(SECRET, claims(now=now - 61, ttl=0)))).code == (
        "token_expired"
    )
    assert (await verifier.verify(hs256(SECRET, claims(now=now - 30, ttl=0)))).name == "user-1"
    not_yet = await refused(verifier, hs256(SECRET, claims(now=now, nbf=now + 120)))
    assert not_yet.code == "invalid_token" and "nbf" in not_yet.message
    assert await verifier.verify(hs256(SECRET, claims(now=now, nbf=now + 30)))
    future = await refused(verifier, hs256(SECRET, claims(now=now + 300)))
    assert "iat" in future.message
    # the fake clock moves: a valid token expires without any real time passing
    token = hs256(SECRET, claims(now=now, ttl=600))
    assert await verifier.verify(token)
    clock.advance(600 + 61)
    assert (await refused(verifier, token)).code == "token_expired"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"aud": "another-app"}, "audience"),
        ({"aud": None}, "'aud'"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"iss": None}, "'iss'"),
        ({"exp": None}, "'exp'"),
        ({"sub": None}, "'sub'"),
        ({"exp": "tomorrow"}, "exp"),
    ],
)
async def test_claims_the_project_requires(
    clock: FakeClock, change: dict[str, object], expected: str
) -> None:
    payload = {k: v for k, v in {**claims(now=clock()), **change}.items() if v is not None}
    error = await refused(secret_verifier(clock), hs256(SECRET, payload))
    assert error.code == "invalid_token" and expected in error.message


async def test_iss_and_aud_unchecked_when_not_set(clock: FakeClock) -> None:
    verifier = TokenVerifier(TokenSettings("secret", secret=SECRET), clock)
    payload = claims(now=clock(), iss=None, aud="anything")
    principal = await verifier.verify(hs256(SECRET, payload))
    assert principal.issuer == ""


async def test_forged_tokens_are_refused(rsa_key: RsaKey, clock: FakeClock) -> None:
    with JwksServer(rsa_key) as server:
        verifier = jwks_verifier(server.url, clock)
        payload = claims(now=clock())
        assert "none" in (await refused(verifier, unsigned(payload))).message
        # HS/RS confusion: an HS256 token "signed" with the RSA public key as HMAC secret
        confused = hs256(rsa_key.public_pem(), payload, kid=rsa_key.kid)
        assert "algorithm" in (await refused(verifier, confused)).message
        # header fields that would let the token choose its key, even on a valid signature
        for field, value in [
            ("jku", "https://evil.example/jwks"),
            ("x5u", "https://evil.example/cert"),
            ("jwk", rsa_key.jwk()),
            ("crit", ["exp"]),
        ]:
            error = await refused(verifier, rsa_key.sign(payload, **{field: value}))
            assert field in error.message, (field, error.message)
        # the signature of another payload
        other = rsa_key.sign(claims("mallory", now=clock()))
        head, _, _ = rsa_key.sign(payload).split(".")
        spliced = ".".join([head, other.split(".")[1], rsa_key.sign(payload).split(".")[2]])
        assert "signature" in (await refused(verifier, spliced)).message


async def test_secret_project_refuses_asymmetric_tokens(rsa_key: RsaKey, clock: FakeClock):
    error = await refused(secret_verifier(clock), rsa_key.sign(claims(now=clock())))
    assert "algorithm" in error.message


async def test_oversized_token_is_refused_unparsed(clock: FakeClock) -> None:
    big = hs256(SECRET, claims(now=clock(), padding="x" * 9 * 1024))
    assert len(big) > 9 * 1024
    assert "8 KiB" in (await refused(secret_verifier(clock), big)).message
    # not even valid base64: refused on size alone, before any parsing
    assert "8 KiB" in (await refused(secret_verifier(clock), "!" * 9 * 1024)).message


async def test_garbage_is_invalid_not_a_crash(clock: FakeClock) -> None:
    for junk in ["abc", "a.b", "a.b.c", "..", encode({"alg": "HS256"}, "[1]") + ".sig"]:
        assert (await refused(secret_verifier(clock), junk)).code == "invalid_token"
    head = base64.urlsafe_b64encode(b'{"alg": "HS256", "kid": 5}').decode().rstrip("=")
    assert "kid" in (await refused(secret_verifier(clock), f"{head}.e30.sig")).message


async def test_unknown_kid_refetches_once_per_30_s(rsa_key: RsaKey, clock: FakeClock) -> None:
    stranger = RsaKey("not-published")
    with JwksServer(rsa_key) as server:
        verifier = jwks_verifier(server.url, clock)
        assert await verifier.verify(rsa_key.sign(claims(now=clock())))
        assert server.requests == 1
        error = await refused(verifier, stranger.sign(claims(now=clock())))
        assert "not in the project's key set" in error.message
        assert server.requests == 2  # refetched once, then refused
        for _ in range(5):  # a flood of unknown kids costs the provider nothing more
            await refused(verifier, stranger.sign(claims(now=clock())))
        assert server.requests == 2
        clock.advance(30)
        await refused(verifier, stranger.sign(claims(now=clock())))
        assert server.requests == 3


async def test_key_set_server_down_keeps_cached_keys(rsa_key: RsaKey, clock: FakeClock) -> None:
    server = JwksServer(rsa_key, cache_control="max-age=300")
    verifier = jwks_verifier(server.url, clock)
    assert await verifier.verify(rsa_key.sign(claims(now=clock())))
    server.stop()
    clock.advance(301)  # the cached set is due: the refetch fails, the held keys still verify
    principal = await verifier.verify(rsa_key.sign(claims(now=clock())))
    assert principal.kid == "rsa-1"
    assert verifier.cache is not None and verifier.cache.fetches == 2


async def test_key_set_never_fetched_is_unavailable(clock: FakeClock) -> None:
    server = JwksServer()
    url = server.url
    server.stop()
    verifier = jwks_verifier(url, clock)
    with pytest.raises(KeysUnavailable):
        await verifier.verify(EcKey("k").sign(claims(now=clock())))


async def test_rotation(clock: FakeClock) -> None:
    old, new = EcKey("2026-01"), EcKey("2026-02")
    with JwksServer(old, cache_control="max-age=3600") as server:
        verifier = jwks_verifier(server.url, clock)
        assert (await verifier.verify(old.sign(claims(now=clock())))).kid == "2026-01"
        server.keys = [old, new]  # the provider publishes the next key ahead of use
        assert (await verifier.verify(new.sign(claims(now=clock())))).kid == "2026-02"
        assert (await verifier.verify(old.sign(claims(now=clock())))).kid == "2026-01"
        assert server.requests == 2  # the new kid triggered the refetch
        server.keys = [new]  # the old key is retired
        clock.advance(3600)
        assert (await verifier.verify(new.sign(claims(now=clock())))).kid == "2026-02"
        assert (
            "not in the project's key set"
            in (await refused(verifier, old.sign(claims(now=clock())))).message
        )


async def test_cache_lifetime_follows_max_age_clamped(clock: FakeClock) -> None:
    key = EcKey("k")
    with JwksServer(key, cache_control="public, max-age=60") as server:
        verifier = jwks_verifier(server.url, clock)
        await verifier.verify(key.sign(claims(now=clock())))
        clock.advance(MIN_TTL - 1)  # 60 s asked, 5 min kept
        await verifier.verify(key.sign(claims(now=clock())))
        assert server.requests == 1
        clock.advance(1)
        await verifier.verify(key.sign(claims(now=clock())))
        assert server.requests == 2


def test_cache_ttl_clamp() -> None:
    assert cache_ttl(None) == MIN_TTL
    assert cache_ttl("max-age=10") == MIN_TTL
    assert cache_ttl("public, max-age=3600, must-revalidate") == 3600
    assert cache_ttl("max-age=99999999") == MAX_TTL
    assert cache_ttl("no-store") == MIN_TTL
    assert cache_ttl("s-maxage=900") == MIN_TTL


async def test_token_without_kid_matches_a_single_key(clock: FakeClock) -> None:
    only = EcKey("only")
    with JwksServer(only) as server:
        verifier = jwks_verifier(server.url, clock)
        assert (await verifier.verify(only.sign(claims(now=clock()), kid=None))).name == "user-1"
        server.keys.append(EcKey("second"))
        clock.advance(600)
        error = await refused(verifier, only.sign(claims(now=clock()), kid=None))
        assert "kid" in error.message
