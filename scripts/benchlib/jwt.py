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
import psutil
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from . import servers
from .wrk import run_wrk

TARGET = 0.8
CONNECTIONS = 32
ROUNDS = 2  # key and token runs alternate this many times per phase
ROUTE = "/who"
SOURCE = 'def handler(request, ctx):\n    return {"ok": True, "who": ctx.auth["type"]}\n'


def _project(root: Path) -> tuple[Path, dict[str, str]]:
    folder = root / "functions" / "who"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "who", "runtime": "python", "method": "GET", "route": ROUTE}
    (folder / "flux.json").write_text(json.dumps({**spec, "auth": ["key", "jwt"]}) + "\n")
    (folder / "main.py").write_text(SOURCE)
    servers.flux(root, "deploy")
    servers.flux(root, "project", "update", "--plan", "team")
    # a key per phase: the team plan's burst (30,000) outlasts one phase only
    return root, {
        phase: servers.flux(root, "api-keys", "create", "--name", phase).strip()
        for phase in ("hs256", "es256")
    }


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


def measure(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """The section (scripts/bench --only jwt): summary rows [figure, measured, target, met?]."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root, keys = _project(work / "jwt")
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
    best: dict[str, Any] = {}  # name -> (best WrkResult, least gateway CPU us per request)

    def alternate(gateway: psutil.Process, phase: str, token: str) -> None:
        key = keys[phase]
        for credential in (key, token):
            run_wrk(url, connections=CONNECTIONS, seconds=s.warmup, headers=_bearer(credential))
        for _ in range(max(ROUNDS, s.repeats)):
            for credential, name in ((key, f"key-{phase}"), (token, phase)):
                before = sum(gateway.cpu_times()[:2])
                run = run_wrk(
                    url, connections=CONNECTIONS, seconds=s.seconds, headers=_bearer(credential)
                )
                cpu = (sum(gateway.cpu_times()[:2]) - before) / max(1, run.requests) * 1e6
                if run.non_2xx or run.socket_errors:
                    raise servers.BenchError(f"jwt bench {name}: {run.non_2xx} non-2xx answers")
                old_run, old_cpu = best.get(name, (run, cpu))
                best[name] = (max(old_run, run, key=lambda r: r.rps), min(old_cpu, cpu))
                log(f"jwt: {name:<10} {run.rps:8.0f} req/s  {cpu:6.0f} us gateway CPU/req")

    with servers.gateway_server(root, port, logs, name="gateway-jwt").start() as gw:
        gateway = psutil.Process(gw.pid)
        _wait_for(url, keys["hs256"])
        _wait_for(url, hs256)
        alternate(gateway, "hs256", hs256)
        servers.flux(root, "project", "update", "--jwt-jwks-file", str(keyset))
        _wait_for(url, es256)
        alternate(gateway, "es256", es256)
    rows = summary_rows(best)
    cost = step_cost_us(2_000 if s.quick else 10_000)
    rows.append(
        [
            "authenticate step in process, us per call (best of 3)",
            f"key {cost['key']:.1f}, HS256 {cost['hs256']:.1f}, ES256 {cost['es256']:.1f}",
            "(explains the rows above)",
            "n/a",
        ]
    )
    return rows


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def summary_rows(best: dict[str, Any]) -> list[list[str]]:
    """Each token path against the key runs of its own phase: req/s, and gateway CPU."""
    rows = []
    for name, label in (("es256", "ES256 (key set)"), ("hs256", "HS256 (secret)")):
        (key_run, key_cpu), (run, cpu) = best[f"key-{name}"], best[name]
        ratio = run.rps / key_run.rps
        rows.append(
            [
                f"user token {label} vs API key, python, c={CONNECTIONS}, req/s",
                f"{ratio:.2f} ({run.rps:,.0f} vs {key_run.rps:,.0f} req/s; gateway CPU "
                f"{cpu:.0f} vs {key_cpu:.0f} us/request)",
                f">= {TARGET}",
                "yes" if ratio >= TARGET else f"**no**: {TARGET - ratio:.2f} short",
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
