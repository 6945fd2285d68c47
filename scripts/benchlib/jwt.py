"""The user-token path against the key path, on one gateway, in the same run (docs/auth.md).

One python function taking either credential, on the team plan, one `flux serve`. Two phases:
with a project secret, API key and HS256 token runs alternate; after switching the project to a
copied ES256 key set, API key and ES256 token runs alternate. Each token path is compared with
the key runs of its own phase (alternating, so a drift of the shared machine hits both sides).
Each credential has its own rate-limit bucket, so no run drains another. Target: each token
path >= 0.8 of the key path at c=32.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from . import servers

TARGET = 0.8
CONNECTIONS = 32
ROUNDS = 2  # key and token runs alternate this many times per phase
ROUTE = "/who"
SOURCE = 'def handler(request, ctx):\n    return {"ok": True, "who": ctx.auth["type"]}\n'


def _project(root: Path) -> tuple[Path, str]:
    folder = root / "functions" / "who"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "who", "runtime": "python", "method": "GET", "route": ROUTE}
    (folder / "flux.json").write_text(json.dumps({**spec, "auth": ["key", "jwt"]}) + "\n")
    (folder / "main.py").write_text(SOURCE)
    servers.flux(root, "deploy")
    servers.flux(root, "project", "update", "--plan", "team")
    return root, servers.flux(root, "api-keys", "create", "--name", "bench").strip()


def _set_secret(root: Path, secret: bytes) -> None:
    out = subprocess.run(
        [servers.FLUX, "--project", str(root), "project", "update", "--jwt-secret-stdin"],
        input=secret,
        capture_output=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise servers.BenchError(f"--jwt-secret-stdin failed: {out.stderr.decode().strip()}")


def _claims(subject: str) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": subject, "iat": now, "exp": now + 3600}


def _wait_for(url: str, token: str, status: int = 200, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (got := servers.get(url, token))[0] != status:
        if time.monotonic() > deadline:
            raise servers.BenchError(f"token path: expected {status}, got {got[0]}: {got[1]!r}")
        time.sleep(0.05)


def measure_tokens(work: Path, logs: Path, measure: Callable[..., Any]) -> dict[str, Any]:
    """``measure(label, url, connections, credential)`` -> WrkResult, for key, HS256, ES256."""
    root, key = _project(work / "jwt")
    secret = b"bench secret, long enough for HS256 (>= 32 bytes)"
    _set_secret(root, secret)
    hs256 = jwt.encode(_claims("bench-hs256"), secret, algorithm="HS256")
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "bench", "alg": "ES256"}
    keyset = work / "jwks.json"
    keyset.write_text(json.dumps({"keys": [jwk]}))
    es256 = jwt.encode(_claims("bench-es256"), private, algorithm="ES256", headers={"kid": "bench"})

    port = servers.free_port()
    url = f"http://127.0.0.1:{port}{ROUTE}"
    runs: dict[str, Any] = {}

    def alternate(name: str, token: str) -> None:
        keys, tokens = [], []
        for _ in range(ROUNDS):
            keys.append(measure("jwt bench: API key", url, CONNECTIONS, key))
            tokens.append(measure(f"jwt bench: {name.upper()}", url, CONNECTIONS, token))
        runs[f"key-{name}"] = max(keys, key=lambda run: run.rps)
        runs[name] = max(tokens, key=lambda run: run.rps)

    with servers.gateway_server(root, port, logs, name="gateway-jwt").start():
        _wait_for(url, key)
        _wait_for(url, hs256)
        alternate("hs256", hs256)
        servers.flux(root, "project", "update", "--jwt-jwks-file", str(keyset))
        _wait_for(url, es256)
        alternate("es256", es256)
    return runs


def summary_rows(runs: dict[str, Any]) -> list[list[str]]:
    """Rows for the targets table: each token path against the key path."""
    rows = []
    for name, label in (("es256", "ES256 (key set)"), ("hs256", "HS256 (secret)")):
        key_run = runs[f"key-{name}"]
        key = key_run.rps
        ratio = runs[name].rps / key
        met = "yes" if ratio >= TARGET else f"**no**: {TARGET - ratio:.2f} short"
        rows.append(
            [
                f"user token {label} vs API key, python, c={CONNECTIONS}, req/s",
                f"{ratio:.2f} ({runs[name].rps:,.0f} vs {key:,.0f} req/s; "
                f"p50 {runs[name].p50_ms:.2f} vs {key_run.p50_ms:.2f} ms)",
                f">= {TARGET}",
                met,
            ]
        )
    return rows


def step_cost_us(calls: int = 5_000) -> dict[str, float]:
    """In process: microseconds per call of the authenticate step (best of 3), for an API key,
    an HS256 token and an ES256 token: what the HTTP ratios above are made of."""
    import trio

    from fluxgw.auth.config import TokenSettings
    from fluxgw.auth.step import authenticate
    from fluxgw.auth.tokens import TokenVerifier
    from fluxgw.keys import KeyRecord, KeyStore, display_prefix, generate_key, hash_key

    store = KeyStore("bench-project")
    key = generate_key("bench-project")
    store.add(KeyRecord("bench", hash_key(key), display_prefix(key), "live", time.time()))
    secret = b"bench secret, long enough for HS256 (>= 32 bytes)"
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k", "alg": "ES256"}
    by_secret = TokenVerifier(TokenSettings("secret", secret=secret), time.time)
    by_keyset = TokenVerifier(TokenSettings("jwks_file", jwks={"keys": [jwk]}), time.time)
    cases = {
        "key": (None, f"Bearer {key}"),
        "hs256": (by_secret, "Bearer " + jwt.encode(_claims("s"), secret, algorithm="HS256")),
        "es256": (
            by_keyset,
            "Bearer " + jwt.encode(_claims("s"), private, algorithm="ES256", headers={"kid": "k"}),
        ),
    }

    async def timed() -> dict[str, float]:
        best: dict[str, float] = {}
        for name, (verifier, header) in cases.items():
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(calls):
                    await authenticate(store, verifier, header)
                per_call = (time.perf_counter() - started) / calls * 1e6
                best[name] = min(best.get(name, per_call), per_call)
        return best

    return trio.run(timed)
