"""A stand-in identity provider for tests (``fluxgw.testing.IdentityProvider``): signing keys,
their key set served over real HTTP on loopback, and tokens signed with them.

    with IdentityProvider(issuer="https://id.test") as idp:
        gw.use_identity_provider(idp)
        token = idp.token("user-1", claims={"role": "admin"})
        idp.rotate()               # publish a new key, sign with it from now on

The server is a thread (``http.server``), so it serves under trio, asyncio or no loop at all.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

_ALGORITHMS = ("ES256", "RS256", "EdDSA")


def _new_key(algorithm: str) -> tuple[Any, dict[str, Any]]:
    """A private key and its public JWK (without kid)."""
    if algorithm == "ES256":
        private: Any = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        public = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(f"algorithm must be one of {', '.join(_ALGORITHMS)}")
    return private, public


class IdentityProvider:
    """Keys, a JWKS URL and tokens, as an identity provider would have them."""

    def __init__(
        self,
        *,
        issuer: str = "https://id.flux.test",
        audience: str | None = None,
        algorithm: str = "ES256",
        cache_control: str = "max-age=300",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.cache_control = cache_control
        self._keys: dict[str, tuple[str, Any, dict[str, Any]]] = {}  # kid -> alg, private, jwk
        self._retired: set[str] = set()
        self.current_kid = self.add_key(algorithm)
        self.requests = 0  # key set fetches served
        self._server: ThreadingHTTPServer | None = None

    # -- keys --------------------------------------------------------------------------------
    def add_key(self, algorithm: str = "ES256") -> str:
        """Publish a new key; returns its kid (tokens keep using the current key)."""
        private, public = _new_key(algorithm)
        kid = f"{algorithm.lower()}-{secrets.token_hex(4)}"
        self._keys[kid] = (algorithm, private, {**public, "kid": kid, "alg": algorithm})
        return kid

    def rotate(self, algorithm: str = "ES256") -> str:
        """Publish a new key and sign with it from now on (the old one stays published)."""
        self.current_kid = self.add_key(algorithm)
        return self.current_kid

    def retire(self, kid: str) -> None:
        """Stop publishing a key (it can still sign: what a leaked retired key would do)."""
        if kid not in self._keys:
            raise KeyError(kid)
        self._retired.add(kid)

    def jwks(self) -> dict[str, Any]:
        published = (jwk for kid, (_, _, jwk) in self._keys.items() if kid not in self._retired)
        return {"keys": list(published)}

    def token(
        self,
        subject: str,
        *,
        ttl: float = 3600,
        claims: dict[str, Any] | None = None,
        kid: str | None = None,
        now: float | None = None,
    ) -> str:
        """A token for ``subject`` signed with the current key (or ``kid``)."""
        kid = kid or self.current_kid
        algorithm, private, _ = self._keys[kid]
        issued = int(time.time() if now is None else now)
        payload: dict[str, Any] = {"iss": self.issuer, "sub": subject, "iat": issued}
        if self.audience:
            payload["aud"] = self.audience
        payload["exp"] = issued + round(ttl)
        payload.update(claims or {})
        return jwt.encode(payload, private, algorithm=algorithm, headers={"kid": kid})

    # -- serving -----------------------------------------------------------------------------
    @property
    def jwks_url(self) -> str:
        if self._server is None:
            self.start()
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def start(self) -> None:
        """Serve the key set on 127.0.0.1 (a free port)."""
        if self._server is not None:
            return
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps(outer.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", outer.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving (fetches fail from now on: what a provider outage looks like)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> IdentityProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
