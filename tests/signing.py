"""Tokens signed for tests without PyJWT (the library under test): base64url, JSON and the
`cryptography` primitives, by hand, as RFC 7515/7518 describe them. Plus a tiny real HTTP
server that publishes a key set on loopback, and can be taken down or changed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://id.example.test"
AUDIENCE = "shop-app"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(number: int) -> str:
    return b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


def encode(header: dict[str, Any], payload: dict[str, Any] | str) -> str:
    """The signing input ``header.payload`` (compact JSON, base64url)."""
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    head = json.dumps(header, separators=(",", ":"))
    return f"{b64url(head.encode())}.{b64url(body.encode())}"


def claims(sub: str = "user-1", ttl: float = 600, now: float | None = None, **extra: Any):
    issued = int(time.time() if now is None else now)
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": issued}
    base["exp"] = issued + ttl
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


class RsaKey:
    def __init__(self, kid: str, alg: str = "RS256") -> None:
        self.kid, self.alg = kid, alg
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "alg": self.alg,
            "use": "sig",
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **header}
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = encode(head, payload)
        if self.alg == "PS256":
            pad: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(hashes.SHA256()), salt_length=32
            )
        else:
            pad = padding.PKCS1v15()
        signature = self.private.sign(signing_input.encode(), pad, hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


class EcKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        head = {"alg": "ES256", "typ": "JWT", "kid": self.kid, **header}
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = encode(head, payload)
        der = self.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS wants r || s, 32 bytes each (RFC 7518 3.4)
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def hs256(secret: bytes, payload: dict[str, Any], **header: Any) -> str:
    head = {"alg": "HS256", "typ": "JWT", **header}
    signing_input = encode(head, payload)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def unsigned(payload: dict[str, Any]) -> str:
    return encode({"alg": "none", "typ": "JWT"}, payload) + "."


class JwksServer:
    """A real HTTP server on 127.0.0.1 publishing ``self.keys`` at ``/jwks``; counts GETs."""

    def __init__(self, *keys: RsaKey | EcKey, cache_control: str | None = "max-age=600"):
        self.keys: list[Any] = list(keys)
        self.cache_control = cache_control
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": [k.jwk() for k in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if outer.cache_control:
                    self.send_header("cache-control", outer.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        """Take the server down: its port refuses connections from now on."""
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self.running = False

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
